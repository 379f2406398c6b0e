"""Where the regression farm's jobs run: a Dask cluster, and the submission of the run.

Three ways to a cluster (`connect`):
- a `LocalCluster` sized to this machine (one single-threaded worker process per CPU we
  may use), the default;
- `--scheduler ADDRESS`: an existing one (`dask scheduler` + `dask worker`s);
- `--jobqueue KIND` (slurm, lsf, sge, pbs): dask-jobqueue's cluster, every parameter
  from a config file (tb/farm-jobqueue.yaml: docs/regression.md), no code change.

A worker that dies while running a task makes the scheduler give the task to another
worker once (`distributed.scheduler.allowed-failures` = 1, set here for the schedulers we
start; an existing scheduler must be started with it, docs/regression.md); a second
death makes it a KilledWorker error, which `gather` reports as a lost job.  Every wait
has a timeout: connecting, and `gather`'s stall limit (no job finished for that long).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dask
import yaml
from distributed import Client, Future, LocalCluster, wait

if TYPE_CHECKING:
    from dask_jobqueue.core import JobQueueCluster

from tb.farm_plan import RTL, Job
from tb.farm_progress import Progress
from tb.farm_worker import JobResult, build_model, make_mutant, run_job

__all__ = ["ALLOWED_FAILURES", "JOBQUEUES", "Timeouts", "connect", "gather", "jobqueue_cluster",
           "submit"]

log = logging.getLogger("cosim.tb.farm")

ALLOWED_FAILURES = 1  # worker deaths a task survives: retried once, then reported
JOBQUEUES = ("slurm", "lsf", "sge", "pbs")
CONNECT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Timeouts:
    job: float = 600.0  # one job's simulator process
    build: float = 900.0  # one model build (or a mutant's Verilog)

    @property
    def stall(self) -> float:
        """No job finished for this long: the rest are reported lost (a cluster with no
        workers, a scheduler gone)."""
        return self.build + self.job + 120.0


def _machine_cpus() -> int:
    return len(os.sched_getaffinity(0))


def jobqueue_cluster(kind: str, config: Path) -> JobQueueCluster:
    """dask-jobqueue's cluster for batch system `kind`, every parameter from the config
    file's `jobqueue.<kind>` section (its `distributed` keys apply too); no job is
    submitted until it is scaled."""
    import dask_jobqueue  # only for this path

    with config.open() as f:
        dask.config.update(dask.config.config, yaml.safe_load(f) or {}, priority="new")
    cls = {"slurm": dask_jobqueue.SLURMCluster, "lsf": dask_jobqueue.LSFCluster,
           "sge": dask_jobqueue.SGECluster, "pbs": dask_jobqueue.PBSCluster}[kind]
    return cls()


@contextlib.contextmanager
def connect(workers: int | None = None, scheduler: str | None = None,
            jobqueue: str | None = None, jobqueue_config: Path | None = None,
            ) -> Iterator[tuple[Client, str]]:
    """A client of the chosen cluster and a line describing it; closed on exit."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(dask.config.set({
            "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
            # Jobs are minutes of CPU in a child process: no work stealing back and forth.
            "distributed.scheduler.work-stealing": False,
        }))
        if scheduler:
            client = stack.enter_context(Client(scheduler, timeout=CONNECT_TIMEOUT_S))
            what = f"scheduler {scheduler}"
        elif jobqueue:
            if jobqueue_config is None:
                raise ValueError("--jobqueue needs --jobqueue-config FILE")
            cluster = stack.enter_context(jobqueue_cluster(jobqueue, jobqueue_config))
            cluster.scale(n=workers or 1)
            client = stack.enter_context(Client(cluster, timeout=CONNECT_TIMEOUT_S))
            what = f"{jobqueue} via dask-jobqueue ({jobqueue_config}), {workers or 1} workers"
        else:
            n = workers or _machine_cpus()
            cluster = stack.enter_context(LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster, timeout=CONNECT_TIMEOUT_S))
            what = f"LocalCluster, {n} workers"
        yield client, what


def submit(client: Client, jobs: list[Job], root: Path, models: Path, verilog: Path,
           timeouts: Timeouts) -> dict[Future, Job]:
    """Submit the run's tasks: each mutant's Verilog, one model build per variant and
    simulator, then the jobs (each on its model), earlier jobs first."""
    built: dict[tuple[str, str], Future] = {}
    sources: dict[str, Future | str] = {RTL: str(verilog)}
    for job in jobs:
        if job.variant not in sources:
            sources[job.variant] = client.submit(make_mutant, job.variant, str(models),
                                                 key=f"mutant-{job.variant}", priority=10**9)
        if (job.variant, job.sim) not in built:
            built[job.variant, job.sim] = client.submit(
                build_model, job.variant, job.sim, sources[job.variant], str(models),
                timeouts.build, key=f"build-{job.variant}-{job.sim}", priority=10**9)
    return {client.submit(run_job, job, built[job.variant, job.sim], str(root), timeouts.job,
                          key=f"job-{job.index}", priority=-job.index): job for job in jobs}


def _lost(job: Job, why: str) -> JobResult:
    return JobResult(job, "lost", note=why)


def gather(client: Client, futures: dict[Future, Job], stall: float,
           on_result: Callable[[JobResult], None] = lambda r: None) -> list[JobResult]:
    """Every job's result as they finish (a task's error or a worker lost twice is a
    "lost" result naming why), with live progress; after `stall` seconds without any
    job finishing, the rest are cancelled and reported lost."""
    results: list[JobResult] = []
    pending = set(futures)
    progress = Progress(len(futures))
    last = time.monotonic()
    failed = 0
    try:
        while pending:
            try:
                done, pending = wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            for fut in done:
                job = futures[fut]
                try:
                    result = fut.result(timeout=CONNECT_TIMEOUT_S)
                except Exception as exc:  # KilledWorker, a task's own error, cancelled
                    result = _lost(job, f"{type(exc).__name__}: {exc}")
                results.append(result)
                failed += result.status != "ran" or not all(c.ok for c in result.cases)
                on_result(result)
                last = time.monotonic()
            if pending and time.monotonic() - last > stall:
                log.error("no job finished for %.0f s: %d jobs reported lost", stall,
                          len(pending))
                client.cancel(list(pending))
                results += [_lost(futures[f], f"no result within {stall:.0f} s")
                            for f in pending]
                pending = set()
            running = min(sum(len(v) for v in client.processing().values()),
                          sum(client.nthreads().values()))
            progress.update(len(results), failed, running)
    finally:
        progress.close()
    return results
