"""The RTL regression (`make sim`): generate, build, run every case, summarise.

    python -m tb.regression --sim {icarus|verilator} --waves {0|1} --out build/sim/SIM

Steps: `rtl.generate` writes the Verilog (`--rtl-dir`, default build/rtl); the simulator
builds it once (incremental) under OUT; all cocotb test modules in `CASE_MODULES` run in
one simulator process; then a per-test PASS/FAIL table and the merged functional coverage
report are printed.  Writes OUT/results.xml (JUnit), OUT/coverage.json, OUT/sim.log,
OUT/stimulus.json (per test: requests driven and their digest), and with --waves 1 an FST
file.  One seed for the run (--seed, else $COSIM_SEED, else a fresh one: tb.seeding),
printed first in the summary with the command that repeats the run.  Exit status: 0 only
if every test passed and, for a full run, every coverpoint is complete.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from qbridge.rtl.simbuild import (
    SIMULATORS,
    TOPLEVEL,
    build,
    build_dir_for,
    generate_verilog,
    run,
)

from models.contract.layout import BUILD, REPO
from models.contract.layout import rtl_dir as default_rtl_dir
from tb.coverage import COVERPOINTS, CoverageDb
from tb.seeding import choose_seed, parse_seed

__all__ = ["CASE_MODULES", "CaseVerdict", "SuiteResult", "case_names", "claim_build_dir",
           "failure_text", "junit_verdicts", "main", "run_suite"]

log = logging.getLogger("cosim.tb.regression")

# cocotb test modules (not named test_*: pytest must not collect them itself).
CASE_MODULES = ("tb.cases_uvm", "tb.cases_endpoint", "tb.cases_planted", "tb.cases_dma")


def case_names(module: str) -> list[str]:
    """Test names a case module defines, read from its source (no simulator needed):
    classes decorated `@pyuvm.test()` and functions decorated `@cocotb.test()`."""
    path = REPO / (module.replace(".", "/") + ".py")
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef | ast.AsyncFunctionDef):
            for dec in node.decorator_list:
                call = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(call, ast.Attribute) and call.attr == "test":
                    names.append(node.name)
    return names


# The line tb.rtl_endpoint.RtlEndpoint.log_stimulus writes for each test.
_STIMULUS = re.compile(r"stimulus of (\w+): (\d+) requests, digest ([0-9a-f]+)")


@dataclass
class SuiteResult:
    sim: str
    seed: int = 0
    results: dict[str, tuple[bool, str]] = field(default_factory=dict)  # name -> (ok, why)
    # test -> "N requests, digest D": what it drove, equal for equal seeds on any simulator
    stimulus: dict[str, str] = field(default_factory=dict)
    coverage: CoverageDb = field(default_factory=CoverageDb)
    waves: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(ok for ok, _ in self.results.values())


@dataclass(frozen=True)
class CaseVerdict:
    name: str
    ok: bool
    why: str  # failure_text of a failing case, "" for a pass
    seconds: float  # the simulator process's wall time for the case (cocotb's JUnit)


def junit_verdicts(path: Path) -> list[CaseVerdict]:
    """Every test case of a cocotb JUnit file, in the order it ran."""
    verdicts = []
    for case in ET.parse(path).getroot().iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        verdicts.append(CaseVerdict(case.get("name", "?"), bad is None,
                                    "" if bad is None else failure_text(bad),
                                    float(case.get("time") or 0.0)))
    return verdicts


def _parse_junit(path: Path) -> dict[str, tuple[bool, str]]:
    return {v.name: (v.ok, v.why) for v in junit_verdicts(path)}


def failure_text(bad: ET.Element) -> str:
    """A cocotb JUnit failure as "ExceptionType: message" (the type tells a timeout,
    e.g. SimTimeoutError with an empty message, from a mismatch: tb.teeth reads it)."""
    message = (bad.get("message") or bad.text or "failed").strip()
    kind = bad.get("type")
    return f"{kind}: {message}" if kind and not message.startswith(kind) else message


def claim_build_dir(build_dir: Path, verilog: Path) -> None:
    """The runner rebuilds only when a source is newer than its output, so a folder that
    built another Verilog file (a mutant's, `--verilog`) would be taken as up to date:
    the folder records which file it built and is emptied when that changes.  Written
    only on a change, so the farm's jobs, which share a folder, only read it."""
    stamp = build_dir / "verilog.path"
    if stamp.is_file() and stamp.read_text() == str(verilog):
        return
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    stamp.write_text(str(verilog))


def run_suite(
    sim: str,
    out: Path,
    waves: bool = False,
    rtl_dir: Path | None = None,
    testcase: list[str] | None = None,
    seed: int | None = None,
    verilog: Path | None = None,
    build_dir: Path | None = None,
) -> SuiteResult:
    """Generate, build and run the cases on `sim`; everything goes under `out`.

    `verilog` runs the suite on an existing `cosim_top.v` instead of generating one (a
    netlist from elsewhere, or a deliberately broken design when checking the suite's
    teeth).  `seed` None: chosen once here (tb.seeding).  `build_dir`: a compiled model
    shared with other runs (the regression farm's jobs), instead of one under `out`.
    """
    seed = choose_seed(seed)
    out = out.resolve()
    if verilog is None:
        verilog = generate_verilog((rtl_dir or default_rtl_dir()).resolve())
    else:
        verilog = verilog.resolve()
    build_dir = build_dir.resolve() if build_dir else build_dir_for(out, sim, waves)
    claim_build_dir(build_dir, verilog)
    runner = build(sim, verilog, build_dir, waves)
    cov_dir = out / "coverage"
    shutil.rmtree(cov_dir, ignore_errors=True)
    results_xml = out / "results.xml"
    results_xml.unlink(missing_ok=True)
    run(runner, list(CASE_MODULES), build_dir, out / "run", results_xml, waves=waves,
        testcase=testcase, extra_env={"COSIM_COVERAGE_DIR": str(cov_dir)}, seed=seed)
    suite = SuiteResult(sim, seed)
    if results_xml.exists():
        suite.results = _parse_junit(results_xml)
    expected = testcase or [n for m in CASE_MODULES for n in case_names(m)]
    for name in expected:
        # A test that never reported (simulator crash) is a failure, not a silent pass.
        suite.results.setdefault(name, (False, "no result: did the simulator crash? see sim.log"))
    for path in sorted(cov_dir.glob("*.json")):
        suite.coverage.merge(CoverageDb.load(path))
    suite.coverage.save(out / "coverage.json")
    log_src = out / "run" / "sim.log"
    if log_src.exists():
        shutil.copyfile(log_src, out / "sim.log")
        for m in _STIMULUS.finditer(log_src.read_text(errors="replace")):
            suite.stimulus[m[1]] = f"{m[2]} requests, digest {m[3]}"
    (out / "stimulus.json").write_text(json.dumps(
        {"sim": sim, "seed": seed, "stimulus": suite.stimulus}, indent=2) + "\n")
    if waves:
        for cand in (build_dir / f"{TOPLEVEL}.fst", out / "run" / "dump.fst"):
            if cand.exists():
                suite.waves = out / f"{TOPLEVEL}.fst"
                shutil.move(cand, suite.waves)
    return suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RTL regression (cocotb + pyuvm)")
    parser.add_argument("--sim", choices=SIMULATORS, default="icarus")
    parser.add_argument("--waves", type=int, choices=(0, 1), default=0)
    parser.add_argument("--out", type=Path, default=None, help="default build/sim/SIM")
    parser.add_argument("--rtl-dir", type=Path, default=None,
                        help="where to generate cosim_top.v (default build/rtl)")
    parser.add_argument("--verilog", type=Path, default=None,
                        help="use this cosim_top.v instead of generating it")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="the simulator's build folder (default under --out); "
                             "shared by the regression farm's jobs")
    parser.add_argument("--build-only", action="store_true",
                        help="build the model (in --build-dir) and run nothing")
    parser.add_argument("--test", action="append", default=None,
                        help="run only this test (repeatable)")
    parser.add_argument("--seed", default=None,
                        help="the run's seed (default: $COSIM_SEED, else a fresh one)")
    args = parser.parse_args(argv)
    try:
        seed = choose_seed(None if args.seed is None else parse_seed(args.seed, "--seed"))
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    out = args.out or BUILD / "sim" / args.sim
    if args.build_only:
        verilog = (args.verilog.resolve() if args.verilog
                   else generate_verilog((args.rtl_dir or default_rtl_dir()).resolve()))
        build_dir = (args.build_dir or build_dir_for(out, args.sim, bool(args.waves))).resolve()
        claim_build_dir(build_dir, verilog)
        build(args.sim, verilog, build_dir, bool(args.waves))
        return 0
    log.info("seed %d", seed)
    suite = run_suite(args.sim, out, bool(args.waves), args.rtl_dir, args.test, seed,
                      args.verilog, args.build_dir)

    names = " ".join(args.test or ())
    tests = f" TEST={names}" if len(args.test or ()) == 1 else f' TEST="{names}"' if names else ""
    print(f"\n=== RTL regression on {args.sim}, seed {seed} "
          f"(repeat: make sim SIM={args.sim} SEED={seed}{tests}) ===")
    print(f"\n=== RTL regression on {args.sim}: per test ===")
    for name, (ok, why) in suite.results.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}" + ("" if ok else f"  -- {why[:300]}"))
    print(f"\n=== functional coverage (merged over the tests, {args.sim}) ===")
    full_run = args.test is None
    required = tuple(COVERPOINTS) if full_run else ()
    for line in suite.coverage.report(required):
        print(f"  {line}")
    unmet = suite.coverage.unmet(required)
    failed = [n for n, (ok, _) in suite.results.items() if not ok]
    print(f"\nresults: {out / 'results.xml'}   log: {out / 'sim.log'}"
          + (f"   waves: {suite.waves}" if suite.waves else ""))
    if failed or unmet:
        print(f"REGRESSION FAILED: {len(failed)} failing tests"
              + (f", incomplete coverpoints: {', '.join(unmet)}" if unmet else ""))
        return 1
    print(f"REGRESSION PASSED: {len(suite.results)} tests"
          + (", all coverpoints complete" if full_run else " (partial run: coverage not required)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
