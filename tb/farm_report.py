"""The regression farm's merged results: coverage with its closure, JUnit, the job table,
the teeth verdicts, and the printed report.

Coverage is merged over the RTL's jobs only (a mutant's coverage says nothing about the
design), per coverpoint and bin: the hits, and the first job in plan order -- hence the
first seed -- that hit it (plan order, not completion order, so the answer is the same
on any cluster).  The closure curve is in completion order: bins covered after each job
that finished, what the farm really saw.  The report lines are `tb.coverage`'s, as
`make sim` prints them.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from tb.coverage import COVERPOINTS, CoverageDb
from tb.farm_plan import RTL, Job, repro_command
from tb.farm_worker import JobResult
from tb.teeth import Failure, classify, verdict

__all__ = ["MergedCoverage", "failures", "jobs_table", "teeth_verdicts", "write_closure_png",
           "write_json", "write_junit"]


@dataclass
class MergedCoverage:
    db: CoverageDb = field(default_factory=CoverageDb)
    first: dict[str, dict[str, Job]] = field(default_factory=dict)  # cp -> bin -> job
    curve: list[int] = field(default_factory=list)  # bins covered after job 1, 2, ...

    @property
    def bins(self) -> int:
        return sum(len(bins) for bins in COVERPOINTS.values())

    def covered(self) -> int:
        return sum(1 for bins in self.db.hits.values() for n in bins.values() if n)

    def add(self, result: JobResult) -> None:
        if result.job.variant != RTL:
            return
        other = CoverageDb()
        other.hits = result.coverage
        self.db.merge(other)
        for cp, bins in result.coverage.items():
            for b, n in bins.items():
                seen = self.first.setdefault(cp, {}).get(b)
                if n and b in self.db.hits.get(cp, {}) and (
                        seen is None or result.job.index < seen.index):
                    self.first[cp][b] = result.job
        self.curve.append(self.covered())

    def to_json(self) -> dict[str, object]:
        points: dict[str, dict[str, object]] = {}
        for cp, bins in self.db.hits.items():
            points[cp] = {}
            for b, n in bins.items():
                job = self.first.get(cp, {}).get(b)
                points[cp][b] = {"hits": n, "first_seed": job.seed if job else None,
                                 "first_job": job.name if job else None}
        return {"jobs": len(self.curve), "bins": self.bins, "covered": self.covered(),
                "curve": self.curve, "coverpoints": points}

    def last_bins(self) -> list[str]:
        """Per complete coverpoint, its bin first hit latest in plan order and that job:
        the seed to rerun to see the coverpoint close."""
        lines = []
        for cp, bins in self.first.items():
            if bins and self.db.complete(cp):
                b, job = max(bins.items(), key=lambda kv: kv[1].index)
                lines.append(f"{cp:<20} closed by job {job.index + 1} ({job.name}): {b}")
        return lines

    def closure_lines(self, points: int = 8) -> list[str]:
        """The closure curve as text: bins covered after a few job counts."""
        n = len(self.curve)
        if not n:
            return ["no RTL job reported coverage"]
        marks = sorted({max(1, round(n * k / points)) for k in range(1, points + 1)})
        line = ", ".join(f"{j}: {self.curve[j - 1]}" for j in marks)
        full = next((j + 1 for j, c in enumerate(self.curve) if c == self.bins), None)
        return [f"bins covered after N jobs (of {self.bins}): {line}",
                f"all bins covered after {full} jobs" if full else
                f"{self.bins - self.curve[-1]} bins never covered in {n} jobs"]


def write_closure_png(cov: MergedCoverage, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.step(range(1, len(cov.curve) + 1), cov.curve, where="post", label="bins covered")
    ax.axhline(cov.bins, color="grey", linestyle="--", label=f"all {cov.bins} bins")
    ax.set_xlabel("jobs finished")
    ax.set_ylabel("coverage bins hit")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, cov.bins * 1.05)
    if len(cov.curve) > 100:  # closure comes early: a long run's tail would hide it
        ax.set_xscale("log")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def failures(results: list[JobResult]) -> list[tuple[JobResult, str, str]]:
    """(job result, case, why) of every case that did not pass, in plan order."""
    bad = []
    for r in sorted(results, key=lambda r: r.job.index):
        if r.status in ("error", "lost"):
            # Worded for tb.teeth.classify: a design that does not build is an error, a
            # job lost with its worker a crash, never a catch by assertion.
            why = (f"could not run: {r.note}" if r.status == "error" else
                   f"no result: did the simulator crash? the job was lost: {r.note}")
            bad += [(r, case, why) for case in r.job.cases]
        else:
            bad += [(r, v.name, v.why) for v in r.cases if not v.ok]
    return bad


def teeth_verdicts(results: list[JobResult], sims: list[str]) -> dict[str, str]:
    """Each mutant's tb.teeth verdict over the simulators run (CAUGHT: some case failed
    by assertion on every one of them)."""
    found: dict[str, list[Failure]] = {}
    for r, case, why in failures(results):
        if r.job.variant != RTL:
            found.setdefault(r.job.variant, []).append(
                Failure(case, r.job.sim, case, classify(case, why), why.splitlines()[0][:160]
                        if why else ""))
    mutants = sorted({r.job.variant for r in results if r.job.variant != RTL})
    return {m: verdict(found.get(m, []), tuple(sims)) for m in mutants}


def jobs_table(results: list[JobResult]) -> list[dict[str, object]]:
    """One row per case run: case, seed, simulator, result, wall time (and where, why,
    and the command that reruns it when it failed)."""
    rows: list[dict[str, object]] = []
    for r in sorted(results, key=lambda r: r.job.index):
        verdicts = {v.name: v for v in r.cases}
        for case in r.job.cases:
            v = verdicts.get(case)
            ok = r.status == "ran" and v is not None and v.ok
            rows.append({
                "job": r.job.index, "variant": r.job.variant, "case": case,
                "seed": r.job.seed, "sim": r.job.sim, "result": "PASS" if ok else "FAIL",
                "status": r.status, "seconds": round(v.seconds if v else 0.0, 3),
                "job_seconds": round(r.seconds, 3), "worker": r.worker, "out": r.out,
                "why": "" if ok else (v.why if v and r.status == "ran" else r.note),
                "repro": "" if ok else repro_command(r.job, case, Path(r.verilog or ".")),
            })
    return rows


def write_junit(results: list[JobResult], teeth: dict[str, str], path: Path) -> None:
    """One JUnit file for the regression: a suite per simulator of the RTL's cases
    (`CASE[seed=N]`), and a `teeth` suite with a case per mutant (failing unless CAUGHT)."""
    root = ET.Element("testsuites", name="regress")
    suites: dict[str, ET.Element] = {}
    for row in jobs_table(results):
        if row["variant"] != RTL:
            continue
        name = f"regress.{row['sim']}"
        if name not in suites:
            suites[name] = ET.SubElement(root, "testsuite", name=name)
        case = ET.SubElement(suites[name], "testcase", classname=name,
                             name=f"{row['case']}[seed={row['seed']}]",
                             time=str(row["seconds"]))
        if row["result"] != "PASS":
            bad = ET.SubElement(case, "failure", message=str(row["why"])[:2000])
            bad.text = f"{row['why']}\nrerun: {row['repro']}"
    if teeth:
        suite = ET.SubElement(root, "testsuite", name="teeth")
        for mutant, result in teeth.items():
            case = ET.SubElement(suite, "testcase", classname="teeth", name=mutant)
            if result != "CAUGHT":
                ET.SubElement(case, "failure", message=f"{mutant}: {result}")
    for suite in root.iter("testsuite"):
        cases = list(suite.iter("testcase"))
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def write_json(data: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
