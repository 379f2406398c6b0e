"""What the regression farm's Dask workers run: mutant sources, model builds, jobs.

Each function is one Dask task; it runs in a worker process, possibly on another host
that sees this checkout and the farm's folders at the same paths.  Simulations and
builds run as child processes (`python -m tb.regression`, the same entry as `make sim`)
in their own process group, killed as a group at their timeout: a hung or crashing
simulator ends its job with a verdict and leaves the worker alive.  A worker that dies
all the same is the scheduler's business (retried once, then reported: tb.farm_cluster).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from qbridge.childenv import child_env
from qbridge.rtl.simbuild import build_dir_for

from models.contract.layout import REPO
from tb.coverage import CoverageDb
from tb.farm_plan import Job
from tb.regression import CaseVerdict, junit_verdicts
from tb.teeth import mutate

__all__ = ["JobResult", "Model", "build_model", "make_mutant", "run_job", "worker_name"]

log = logging.getLogger("cosim.tb.farm")


@dataclass(frozen=True)
class Model:
    """A compiled model shared by every job of one variant and simulator."""

    variant: str
    sim: str
    verilog: str
    build_dir: str
    error: str = ""  # why there is none
    seconds: float = 0.0  # wall time of the build (near 0 when it was up to date)


@dataclass
class JobResult:
    job: Job
    status: str  # "ran" (verdicts below), "timeout", "error" (no model), "lost" (worker died)
    cases: list[CaseVerdict] = field(default_factory=list)
    coverage: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the job's simulator process
    worker: str = ""
    note: str = ""
    out: str = ""
    verilog: str = ""  # the design it ran on (a mutant's, for the rerun command)


def worker_name() -> str:
    """host:pid of this process: which worker ran a job (a Dask worker's own process)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _run_logged(argv: list[str], logfile: Path, timeout: float) -> int | None:
    """Run `argv` in its own process group, output into `logfile`; its exit status, or
    None when it ran past `timeout` seconds (then the whole group is killed)."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    # A worker killed (its nanny's restart, the cluster's close) takes its job with it
    # instead of leaving it running unowned.
    prefix = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
    with logfile.open("w") as out:
        proc = subprocess.Popen([*prefix, *argv], cwd=REPO, env=child_env(),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def _tail(logfile: Path) -> str:
    lines = logfile.read_text(errors="replace").strip().splitlines() if logfile.exists() else []
    return lines[-1][:200] if lines else "no output"


def make_mutant(name: str, models: str) -> str:
    """The Verilog of tb.teeth's mutant `name`, written under the models folder; ''
    when the mutant cannot be made (its patch no longer applies, its RTL does not
    elaborate): the build then reports it."""
    try:
        return str(mutate(name, Path(models) / name / "src"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log.warning("mutant %s: %s", name, exc)
        return ""


def build_model(variant: str, sim: str, verilog: str, models: str, timeout: float) -> Model:
    """Build `verilog` for `sim` in the models folder (incremental: a fresh model is
    reused as it is)."""
    build_dir = build_dir_for(Path(models) / variant, sim, waves=False)
    if not verilog:
        return Model(variant, sim, verilog, str(build_dir), f"no Verilog for {variant}")
    t0 = time.monotonic()
    logfile = build_dir.parent / f"build-{sim}.log"
    rc = _run_logged([sys.executable, "-m", "tb.regression", "--sim", sim, "--verilog", verilog,
                      "--build-dir", str(build_dir), "--build-only"], logfile, timeout)
    seconds = time.monotonic() - t0
    if rc != 0:
        why = f"timed out after {timeout:.0f} s" if rc is None else f"exit {rc}: {_tail(logfile)}"
        return Model(variant, sim, verilog, str(build_dir),
                     f"{variant} did not build on {sim} ({why}; {logfile})", seconds)
    return Model(variant, sim, verilog, str(build_dir), seconds=seconds)


def run_job(job: Job, model: Model, root: str, timeout: float) -> JobResult:
    """Run `job`'s cases on its model; the verdict of each from the run's JUnit file, and
    the coverage its cases recorded."""
    out = job.out_dir(Path(root))
    result = JobResult(job, "ran", worker=worker_name(), out=str(out), verilog=model.verilog)
    if model.error:
        result.status, result.note = "error", model.error
        return result
    argv = [sys.executable, "-m", "tb.regression", "--sim", job.sim, "--seed", str(job.seed),
            "--out", str(out), "--verilog", model.verilog, "--build-dir", model.build_dir]
    for case in job.cases:
        argv += ["--test", case]
    t0 = time.monotonic()
    rc = _run_logged(argv, out / "job.log", timeout)
    result.seconds = time.monotonic() - t0
    junit = out / "results.xml"
    found = {v.name: v for v in junit_verdicts(junit)} if junit.exists() else {}
    if rc is None:
        result.status, result.note = "timeout", f"killed after {timeout:.0f} s"
    for case in job.cases:
        # A case that never reported (crash, timeout) fails: it is never silently lost.
        # Worded so that tb.teeth.classify tells a timeout and a crash from a mismatch.
        why = (f"job timed out: killed after {timeout:.0f} s" if rc is None else
               f"no result: did the simulator crash? (exit {rc}: {_tail(out / 'job.log')}); "
               f"see {out / 'job.log'}")
        result.cases.append(found.get(case, CaseVerdict(case, False, why, result.seconds)))
    coverage = out / "coverage.json"
    if coverage.exists():
        result.coverage = CoverageDb.load(coverage).hits
    return result
