"""Where the regression farm's jobs run: a Dask cluster, and the submission of the run.

Three ways to a cluster (`connect`):
- a `LocalCluster` sized to this machine (one single-threaded worker process per CPU we
  may use), the default;
- `--scheduler ADDRESS`: an existing one (`dask scheduler` + `dask worker`s);
- `--jobqueue KIND` (slurm, lsf, sge, pbs): dask-jobqueue's cluster, every parameter
  from a config file (tb/farm-jobqueue.yaml: docs/regression.md), no code change.

A worker that dies while running a task makes the scheduler give the task to another
worker once (`distributed.scheduler.allowed-failures` = 1, set here for the schedulers we
start; an existing scheduler must be started with it: docs/regression.md); a second
death makes it a KilledWorker error, which `gather_jobs` reports as a lost job.  Every
wait has a timeout: connecting, and the stall limit of `run_calls` (nothing finished for
that long).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import yaml
from distributed import Client, Future, LocalCluster, wait

if TYPE_CHECKING:
    from dask_jobqueue.core import JobQueueCluster

from tb.farm_plan import RTL, Job
from tb.farm_progress import Progress
from tb.farm_worker import JobResult, Model, build_model, make_mutant, run_job

__all__ = ["ALLOWED_FAILURES", "JOBQUEUES", "Call", "ClusterUnreachable", "Timeouts", "connect",
           "gather_jobs", "jobqueue_cluster", "run_calls", "run_regression"]

log = logging.getLogger("cosim.tb.farm")

ALLOWED_FAILURES = 1  # worker deaths a task survives: retried once, then reported
JOBQUEUES = ("slurm", "lsf", "sge", "pbs")
CONNECT_TIMEOUT_S = 60.0


class ClusterUnreachable(Exception):
    """The cluster asked for cannot be reached (the message says which and why)."""


@dataclass(frozen=True)
class Timeouts:
    job: float = 600.0  # one job's simulator process
    build: float = 900.0  # one model build (or a mutant's Verilog)
    workers: float = 600.0  # the cluster without any worker (a batch queue's wait)

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
            try:
                client = stack.enter_context(Client(scheduler, timeout=CONNECT_TIMEOUT_S))
            except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a bad address
                raise ClusterUnreachable(f"cannot reach the scheduler {scheduler}: {exc}"
                                         ) from None
            what = f"scheduler {scheduler}"
        elif jobqueue:
            if jobqueue_config is None:
                raise ValueError("--jobqueue needs --jobqueue-config FILE")
            try:
                cluster = stack.enter_context(jobqueue_cluster(jobqueue, jobqueue_config))
            except (yaml.YAMLError, ValueError, TypeError, KeyError, OSError) as exc:
                raise ClusterUnreachable(f"no {jobqueue} cluster from {jobqueue_config}: "
                                         f"{type(exc).__name__}: {exc}") from None
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


@dataclass(frozen=True)
class Call:
    """One task: `fn(*args)` on some worker, under a key unique to this run."""

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]


def run_calls(client: Client, calls: list[Call], stall: float,
              on_done: Callable[[Call, Any, BaseException | None], None],
              on_tick: Callable[[int], None] = lambda running: None,
              no_workers: float = Timeouts.workers) -> None:
    """Run `calls` on the cluster, at most one per worker thread at a time, and hand each
    to `on_done` with its value or its exception (KilledWorker after its second lost
    worker, the task's own error, or a TimeoutError when nothing finished for `stall`
    seconds or the cluster had no worker for `no_workers` seconds: then everything left
    is cancelled and handed on so).

    Held back on the client rather than all submitted at once: the scheduler counts a
    worker's death against every task assigned to it, so a worker must hold only the
    task it runs for "retried once" to mean that task's own retries."""
    todo = deque(calls)
    running: dict[Future, Call] = {}
    last = staffed = time.monotonic()
    while todo or running:
        threads = sum(client.nthreads().values())
        window = max(1, threads)
        if threads:
            staffed = time.monotonic()
        while todo and len(running) < window:
            call = todo.popleft()
            running[client.submit(call.fn, *call.args, key=call.key, pure=False)] = call
        on_tick(len(running))
        try:
            done, _ = wait(list(running), timeout=1.0, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        for fut in done:
            call = running.pop(fut)
            try:
                value, error = fut.result(timeout=CONNECT_TIMEOUT_S), None
            except Exception as exc:  # KilledWorker, the task's own error, cancelled
                value, error = None, exc
            on_done(call, value, error)
            last = time.monotonic()
        now = time.monotonic()
        if running and (now - last > stall or now - staffed > no_workers):
            why = (f"no worker in the cluster for {no_workers:.0f} s" if now - staffed >
                   no_workers else f"nothing finished for {stall:.0f} s")
            log.error("%s: %d tasks given up", why, len(running) + len(todo))
            client.cancel(list(running))
            for call in [*running.values(), *todo]:
                on_done(call, None, TimeoutError(f"no result: {why}"))
            break
    on_tick(0)


def gather_jobs(client: Client, calls: dict[Job, Call], stall: float,
                on_result: Callable[[JobResult], None] = lambda r: None,
                no_workers: float = Timeouts.workers) -> list[JobResult]:
    """Run job calls (each returns its JobResult) with live progress; a call that failed
    is a "lost" result naming why: a job is never silently lost."""
    results: list[JobResult] = []
    progress = Progress(len(calls))
    by_key = {call.key: job for job, call in calls.items()}
    failed = 0

    def done(call: Call, value: Any, error: BaseException | None) -> None:
        nonlocal failed
        job = by_key[call.key]
        result = value if error is None else JobResult(
            job, "lost", note=f"{type(error).__name__}: {error}")
        results.append(result)
        failed += result.status != "ran" or not all(c.ok for c in result.cases)
        on_result(result)

    try:
        run_calls(client, list(calls.values()), stall, done,
                  lambda running: progress.update(len(results), failed, running), no_workers)
    finally:
        progress.close()
    return results


def run_regression(client: Client, jobs: list[Job], root: Path, models: Path, verilog: Path,
                   timeouts: Timeouts, on_result: Callable[[JobResult], None] = lambda r: None,
                   ) -> tuple[list[JobResult], list[Model]]:
    """The run on the cluster: each mutant's Verilog, one model build per variant and
    simulator, then the jobs (earlier ones first), each on its model.  The jobs' results
    and the models."""
    run = uuid.uuid4().hex[:8]  # keys unique on a scheduler that other runs share
    sources: dict[str, str] = {RTL: str(verilog)}

    def source_done(call: Call, value: Any, error: BaseException | None) -> None:
        sources[call.args[0]] = "" if error else value
        if error:
            log.warning("mutant %s: %s: %s", call.args[0], type(error).__name__, error)

    mutants = sorted({j.variant for j in jobs} - {RTL})
    run_calls(client, [Call(f"mutant-{run}-{m}", make_mutant, (m, str(models)))
                       for m in mutants], timeouts.stall, source_done,
              no_workers=timeouts.workers)
    built: dict[tuple[str, str], Model] = {}

    def build_done(call: Call, value: Any, error: BaseException | None) -> None:
        variant, sim = call.args[:2]
        built[variant, sim] = value if error is None else Model(
            variant, sim, "", "", f"the build of {variant} on {sim} was lost: {error}")

    variants = list(dict.fromkeys((j.variant, j.sim) for j in jobs))
    log.info("building %d models (%s)", len(variants), models)
    run_calls(client, [Call(f"build-{run}-{v}-{s}", build_model,
                            (v, s, sources[v], str(models), timeouts.build))
                       for v, s in variants], timeouts.stall, build_done,
              no_workers=timeouts.workers)
    for model in built.values():
        if model.error:
            log.warning("%s", model.error)
    calls = {job: Call(f"job-{run}-{job.index}", run_job,
                       (job, built[job.variant, job.sim], str(root), timeouts.job))
             for job in jobs}
    results = gather_jobs(client, calls, timeouts.stall, on_result, timeouts.workers)
    for r in results:  # a lost job's rerun command needs its netlist too
        r.verilog = r.verilog or built[r.job.variant, r.job.sim].verilog
    return results, list(built.values())
