"""The regression farm (`make regress`): the cases of tb/ x seeds x simulators (and, with
--teeth, tb.teeth's mutants x cases) as independent jobs on a Dask cluster.

    python -m tb.farm [--seeds N] [--seed BASE] [--sim icarus --sim verilator]
                      [--workers N | --scheduler ADDRESS | --jobqueue KIND --jobqueue-config F]
                      [--teeth | --mutant NAME ...] [--test CASE ...] [--group case|seed]

Each job is one simulator process (`python -m tb.regression`, as `make sim`) with its own
seed and output folder, on the compiled model of its design variant and simulator,
built once per run (incremental across runs) in --models.  Written to --out: results.xml
(one JUnit for the run), coverage.json (per coverpoint and bin: hits, first seed),
closure.png (bins covered against jobs finished), jobs.json (case, seed, simulator,
result, wall time per case run), timing.json (where the time went) and each job's
folder under jobs/.  Printed: live
progress, the dashboard's address, every failure with the one command that reruns it
with waves, the teeth verdicts, the merged coverage in `make sim`'s format and the
closure.  Exit status 0 only if every RTL case passed, every mutant was CAUGHT and, when
every case ran, every coverpoint is complete; 2 for bad input.  docs/regression.md.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import NoReturn

from qbridge.rtl.simbuild import SIMULATORS, generate_verilog

from models.contract.layout import regress_dir, regress_models_dir
from models.contract.layout import rtl_dir as default_rtl_dir
from tb.coverage import COVERPOINTS
from tb.farm_cluster import JOBQUEUES, ClusterUnreachable, Timeouts, connect, run_regression
from tb.farm_plan import GROUPS, RTL, job_seeds, jobs_dir, plan, repro_command
from tb.farm_report import (
    MergedCoverage,
    failures,
    jobs_table,
    teeth_verdicts,
    write_closure_png,
    write_json,
    write_junit,
)
from tb.farm_worker import JobResult
from tb.regression import CASE_MODULES, case_names
from tb.seeding import choose_seed, parse_seed
from tb.teeth import MUTANTS

__all__ = ["main"]

log = logging.getLogger("cosim.tb.farm")

SHOWN_FAILURES = 20  # failures printed in full; every one is in jobs.json and results.xml


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        self.exit(2, f"tb.farm: error: {message}\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of seconds")
    return value


def _parser() -> _Parser:
    p = _Parser(prog="python -m tb.farm", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=_positive, default=10, help="seeds per case and simulator")
    p.add_argument("--seed", default=None,
                   help="the base seed (default: $COSIM_SEED, else a fresh one)")
    p.add_argument("--sim", action="append", choices=SIMULATORS, default=None,
                   help="a simulator (repeatable; default: all)")
    p.add_argument("--test", action="append", default=None, help="a case (repeatable; "
                   "default: every case of tb.regression's CASE_MODULES)")
    p.add_argument("--group", choices=GROUPS, default="case",
                   help="a job per case (default), or one per seed and simulator "
                        "running all the cases in one simulator process")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, help="an existing Dask scheduler")
    where.add_argument("--jobqueue", choices=JOBQUEUES, default=None,
                       help="a batch system through dask-jobqueue (needs --jobqueue-config)")
    p.add_argument("--jobqueue-config", type=Path, default=None,
                   help="dask-jobqueue's settings (e.g. tb/farm-jobqueue.yaml)")
    p.add_argument("--workers", type=_positive, default=None,
                   help="LocalCluster or dask-jobqueue workers (default: this machine's CPUs)")
    p.add_argument("--teeth", action="store_true", help="also run every tb.teeth mutant")
    p.add_argument("--mutant", action="append", default=None,
                   help="run this tb.teeth mutant (repeatable; implies --teeth)")
    p.add_argument("--mutant-seeds", type=_positive, default=1,
                   help="seeds per mutant, case and simulator")
    p.add_argument("--timeout", type=_seconds, default=Timeouts.job,
                   help="seconds one job may run")
    p.add_argument("--build-timeout", type=_seconds, default=Timeouts.build,
                   help="seconds one model build may take")
    p.add_argument("--worker-wait", type=_seconds, default=Timeouts.workers,
                   help="seconds the cluster may have no worker (a batch queue's wait)")
    p.add_argument("--out", type=Path, default=regress_dir())
    p.add_argument("--models", type=Path, default=regress_models_dir(),
                   help="compiled models, kept between runs")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    all_cases = [n for m in CASE_MODULES for n in case_names(m)]
    unknown = [c for c in args.test or () if c not in all_cases]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; known: {' '.join(all_cases)}")
    unknown = [m for m in args.mutant or () if m not in MUTANTS]
    if unknown:
        parser.error(f"unknown mutant {unknown[0]!r}; known: {' '.join(MUTANTS)}")
    if args.jobqueue and args.jobqueue_config is None:
        parser.error("--jobqueue needs --jobqueue-config FILE (e.g. tb/farm-jobqueue.yaml)")
    if args.jobqueue_config is not None and not args.jobqueue_config.is_file():
        parser.error(f"--jobqueue-config {args.jobqueue_config}: no such file")
    try:
        base = choose_seed(None if args.seed is None else parse_seed(args.seed, "--seed"))
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    # The simulators' and Dask's own INFO lines would drown the farm's.
    for name in ("distributed", "cocotb", "cosim.qbridge", "cosim.tb.regression"):
        logging.getLogger(name).setLevel(logging.WARNING)

    sims = list(dict.fromkeys(args.sim or SIMULATORS))
    cases = list(dict.fromkeys(args.test or all_cases))
    mutants = list(dict.fromkeys(args.mutant or (list(MUTANTS) if args.teeth else [])))
    seeds = job_seeds(base, args.seeds)
    jobs = plan(cases, sims, seeds, mutants, args.mutant_seeds, args.group)
    timeouts = Timeouts(job=args.timeout, build=args.build_timeout, workers=args.worker_wait)
    out, models = args.out.resolve(), args.models.resolve()
    shutil.rmtree(jobs_dir(out), ignore_errors=True)  # no folder of an earlier run mixes in
    print(f"=== regression farm: {len(jobs)} jobs ({len(cases)} cases x {len(seeds)} seeds x "
          f"{' '.join(sims)}" + (f", + {len(mutants)} mutants x {args.mutant_seeds} seeds"
                                 if mutants else "") + f"), base seed {base} ===", flush=True)
    cov = MergedCoverage()
    t0 = time.monotonic()
    try:
        with connect(args.workers, args.scheduler, args.jobqueue,
                     args.jobqueue_config) as (client, what):
            print(f"cluster: {what}; dashboard: {client.dashboard_link or 'none'}", flush=True)
            t_cluster = time.monotonic()
            verilog = generate_verilog(default_rtl_dir().resolve())
            results, built = run_regression(client, jobs, out, models, verilog, timeouts,
                                            cov.add)
            workers = len(client.nthreads())
    except ClusterUnreachable as exc:
        return _fail(str(exc))
    t_jobs = time.monotonic()
    status = _report(results, cov, sims, cases == all_cases, out, t_jobs - t0, base)
    # Where the time went, for bench.regress: the cluster's start, the models' builds
    # (each on a worker), the jobs' simulator processes, and the merge and report here.
    write_json({"jobs": len(results), "case_runs": sum(len(r.job.cases) for r in results),
                "workers": workers, "group": args.group,
                "wall_s": round(time.monotonic() - t0, 3),
                "cluster_start_s": round(t_cluster - t0, 3),
                "dispatch_s": round(t_jobs - t_cluster, 3),
                "build_s": {f"{m.variant}/{m.sim}": round(m.seconds, 3) for m in built},
                "job_process_s": round(sum(r.seconds for r in results), 3),
                "longest_job_s": round(max((r.seconds for r in results), default=0.0), 3),
                "case_s": round(sum(v.seconds for r in results for v in r.cases), 3),
                "report_s": round(time.monotonic() - t_jobs, 3), "status": status},
               out / "timing.json")
    return status


def _fail(message: str) -> int:
    print(f"tb.farm: error: {' '.join(message.split())}", file=sys.stderr)  # one line
    return 2


def _report(results: list[JobResult], cov: MergedCoverage, sims: list[str], full: bool, out: Path,
            wall: float, base: int) -> int:
    teeth = teeth_verdicts(results, sims)
    write_junit(results, teeth, out / "results.xml")
    write_json(jobs_table(results), out / "jobs.json")
    write_json(cov.to_json(), out / "coverage.json")
    title = f"coverage closure: {len(cov.curve)} RTL jobs on {' '.join(sims)}, base seed {base}"
    write_closure_png(cov, out / "closure.png", title)

    bad = [f for f in failures(results) if f[0].job.variant == RTL]
    ran = sum(len(r.job.cases) for r in results if r.job.variant == RTL)
    print(f"\n=== regression farm: {len(results)} jobs in {wall:.0f} s "
          f"({len(results) / wall * 60:.1f} jobs/min), {ran} RTL case runs, "
          f"{len(bad)} failed ===")
    for r, case, why in bad[:SHOWN_FAILURES]:
        print(f"  FAIL  {case} seed {r.job.seed} on {r.job.sim}  -- {why.splitlines()[0][:300]}")
        print(f"        rerun: {_rerun(r, case)}")
    if len(bad) > SHOWN_FAILURES:
        print(f"  ... and {len(bad) - SHOWN_FAILURES} more failures: {out / 'jobs.json'}")
    if teeth:
        print("\n=== teeth: mutants (caught = a case failed by assertion on every simulator) ===")
        mutant_fails = [f for f in failures(results) if f[0].job.variant != RTL]
        for mutant, result in teeth.items():
            print(f"  {result:8} {mutant}")
            for sim in sims:  # one planted failure per simulator, and how to see it
                first = next((f for f in mutant_fails
                              if f[0].job.variant == mutant and f[0].job.sim == sim), None)
                if first:
                    r, case, why = first
                    print(f"           {sim}: {case} seed {r.job.seed} -- "
                          f"{why.splitlines()[0][:160]}")
                    print(f"           rerun: {_rerun(r, case)}")
    print(f"\n=== functional coverage (merged over {len(cov.curve)} RTL jobs, "
          f"{' '.join(sims)}) ===")
    required = tuple(COVERPOINTS) if full else ()
    for line in cov.db.report(required):
        print(f"  {line}")
    print("\n=== coverage closure ===")
    for line in cov.closure_lines():
        print(f"  {line}")
    print("  each complete coverpoint's last bin, in plan order:")
    for line in cov.last_bins():
        print(f"    {line}")
    print(f"\nresults: {out / 'results.xml'}   jobs: {out / 'jobs.json'}   coverage: "
          f"{out / 'coverage.json'}   closure: {out / 'closure.png'}")
    unmet = cov.db.unmet(required)
    short = [m for m, v in teeth.items() if v != "CAUGHT"]
    if bad or unmet or short:
        print(f"REGRESS FAILED: {len(bad)} failing case runs"
              + (f", incomplete coverpoints: {', '.join(unmet)}" if unmet else "")
              + (f", mutants not caught: {', '.join(short)}" if short else ""))
        return 1
    print(f"REGRESS PASSED: {ran} case runs"
          + (f", {len(teeth)} mutants caught" if teeth else "")
          + (", all coverpoints complete" if full else " (partial run: coverage not required)"))
    return 0


def _rerun(result: JobResult, case: str) -> str:
    return repro_command(result.job, case, Path(result.verilog))


if __name__ == "__main__":
    sys.exit(main())
