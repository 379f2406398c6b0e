"""Regression farm throughput (tb.farm): jobs/minute with 1 and 2 workers, and where the
time goes, with a model of what N workers would give.

    python -m bench.regress [--seeds 2] [--workers 1 --workers 2] [--group case] [--out DIR]

Per worker count, one farm run as a user types it (`python -m tb.farm`, a LocalCluster,
every case on both simulators, --seeds seeds, fixed base seed), on models already built
(an unmeasured warm-up run builds them), then one run with a fresh models folder for the
cold build.  From each run's timing.json: the wall time, the cluster's start, the builds,
the jobs' simulator processes (summed) and their cases' own time (cocotb's), and the
merge and report.  The model for N workers:

    wall(N) = start + build + report + max(ceil(jobs / N) * mean job / efficiency,
                                           longest job)

with `efficiency` measured as process_sum / (dispatch x workers) at 2 workers (how well
two workers kept busy on two shared cores), for the jobs of `make regress SEEDS=50`.
Prints the figures, writes them as JSON; a benchmark, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from qbridge.childenv import child_env

from models.contract.layout import OUT, REPO

__all__ = ["FIGURE_RATE", "FIGURE_SPLIT", "Sample", "main", "model", "run_farm"]

log = logging.getLogger("cosim.bench.regress")

FIGURE_RATE = "regression farm throughput [jobs/min]"
FIGURE_SPLIT = "regression farm time split [s]"
BASE_SEED = 1  # the same jobs in every run
FARM_TIMEOUT_S = 3600.0
PAPER_WORKERS = (1, 2, 4, 8, 16, 32, 64)
SEEDS_ON_PAPER = 50  # the model's run: make regress SEEDS=50


@dataclass(frozen=True)
class Sample:
    workers: int
    group: str
    jobs: int
    case_runs: int  # a job per case: = jobs; a job per seed: jobs x cases
    wall_s: float
    cluster_start_s: float
    dispatch_s: float  # builds and jobs on the cluster
    build_s: float  # the longest build (they run in parallel, before the jobs)
    job_process_s: float  # every job's simulator process, summed
    longest_job_s: float  # the longest of them: no number of workers goes below it
    case_s: float  # the cases' own time inside them (cocotb's JUnit times)
    report_s: float  # merge, JUnit, coverage, PNG, printing
    ok: bool

    @property
    def jobs_per_min(self) -> float:
        return 60.0 * self.jobs / self.wall_s

    @property
    def case_runs_per_min(self) -> float:
        return 60.0 * self.case_runs / self.wall_s


def run_farm(out: Path, models: Path, workers: int, seeds: int, group: str) -> Sample:
    """One `python -m tb.farm` run; its timing.json as a Sample."""
    argv = [sys.executable, "-m", "tb.farm", "--seeds", str(seeds), "--seed", str(BASE_SEED),
            "--workers", str(workers), "--group", group, "--out", str(out), "--models",
            str(models)]
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{out.name}.log").open("w") as logf:
        rc = subprocess.run(argv, cwd=REPO, env=child_env(), stdout=logf,
                            stderr=subprocess.STDOUT, timeout=FARM_TIMEOUT_S).returncode
    t = json.loads((out / "timing.json").read_text())
    return Sample(workers, group, t["jobs"], t["case_runs"], t["wall_s"], t["cluster_start_s"],
                  t["dispatch_s"], max(t["build_s"].values(), default=0.0), t["job_process_s"],
                  t["longest_job_s"], t["case_s"], t["report_s"], rc == 0)


def model(warm: Sample, build_s: float, efficiency: float, jobs: int | None = None,
          mean: float | None = None) -> dict[int, dict[str, float]]:
    """What N workers would give for `jobs` jobs like `warm`'s (default: its count) of
    `mean` seconds each (default: `warm`'s mean):

        wall(N) = start + build + report + max(ceil(jobs / N) * mean job / efficiency,
                                               longest job)

    the jobs' processes are the only part that divides; each worker runs whole jobs."""
    jobs = jobs or warm.jobs
    fixed = warm.cluster_start_s + build_s + warm.report_s
    mean = mean or warm.job_process_s / warm.jobs
    paper = {}
    for n in PAPER_WORKERS:
        wall = fixed + max(math.ceil(jobs / n) * mean / efficiency, warm.longest_job_s)
        paper[n] = {"wall_s": round(wall, 1), "jobs_per_min": round(60 * jobs / wall, 1)}
    return paper


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.regress",
                                description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--workers", type=int, action="append", default=None)
    p.add_argument("--group", choices=("case", "seed"), action="append", default=None)
    p.add_argument("--out", type=Path, default=OUT / "bench" / "regress")
    args = p.parse_args(argv)
    if args.seeds < 1 or any(w < 1 for w in args.workers or ()):
        p.error("--seeds and --workers must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    out: Path = args.out.resolve()
    models = out / "models"
    workers = args.workers or [1, 2]
    groups = args.group or ["case", "seed"]
    load0 = [round(x, 2) for x in os.getloadavg()]
    log.info("warm-up run (builds the models)")
    run_farm(out / "warmup", models, max(workers), 1, groups[0])
    samples = []
    for group in groups:
        for n in workers:
            s = run_farm(out / f"{group}-w{n}", models, n, args.seeds, group)
            log.info("%-5s %d workers: %d jobs in %.0f s = %.1f jobs/min, %.1f case runs/min "
                     "(processes %.0f s, cases %.0f s, report %.1f s)%s", group, n, s.jobs,
                     s.wall_s, s.jobs_per_min, s.case_runs_per_min, s.job_process_s, s.case_s,
                     s.report_s, "" if s.ok else " FAILED")
            samples.append(s)
    shutil.rmtree(out / "cold-models", ignore_errors=True)
    t0 = time.monotonic()
    cold = run_farm(out / "cold", out / "cold-models", max(workers), 1, groups[0])
    log.info("cold build: %.0f s (longest model), whole run %.0f s", cold.build_s,
             time.monotonic() - t0)
    paper = {}
    for group in groups:
        mine = [s for s in samples if s.group == group]
        two = max(mine, key=lambda s: s.workers)
        efficiency = min(1.0, two.job_process_s / (two.dispatch_s * two.workers))
        # A job's own time from the run where it had a core to itself (the fewest
        # workers): with 2 workers on 2 cores shared with others, jobs wait for CPU.
        mean = min(s.job_process_s / s.jobs for s in mine)
        # The same work as `make regress SEEDS=50` on both simulators, in this grouping.
        seeds50 = two.jobs * SEEDS_ON_PAPER // args.seeds
        paper[group] = {f"efficiency_at_{two.workers}_workers": round(efficiency, 3),
                        "mean_job_s": round(mean, 3),
                        "measured_jobs_warm": model(two, 0.0, efficiency, mean=mean),
                        f"seeds_{SEEDS_ON_PAPER}_cold": model(two, cold.build_s, efficiency,
                                                              seeds50, mean)}
        print(f"\na job per {group}: N workers for SEEDS={SEEDS_ON_PAPER} ({seeds50} jobs of "
              f"{mean:.2f} s, cold build {cold.build_s:.0f} s), efficiency {efficiency:.2f} "
              f"measured at {two.workers} workers")
        for n, fig in paper[group][f"seeds_{SEEDS_ON_PAPER}_cold"].items():
            print(f"  {n:3d}: {fig['jobs_per_min']:7.1f} jobs/min, {fig['wall_s']:7.1f} s")
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "cpus": os.cpu_count(), "seeds": args.seeds, "load_before": load0,
              "load_after": [round(x, 2) for x in os.getloadavg()],
              "samples": [asdict(s) | {"jobs_per_min": round(s.jobs_per_min, 2),
                                       "case_runs_per_min": round(s.case_runs_per_min, 2)}
                          for s in samples],
              "cold": asdict(cold), "model": paper}
    (out / "regress.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {out / 'regress.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
