"""The regression farm's plan: which jobs run, with which seeds, and how to rerun one.

A job is one simulator process: one case (`group="case"`, the default) or every selected
case (`group="seed"`) of one design variant -- the RTL, or a `tb.teeth` mutant -- on one
simulator at one seed.  Pure Python: the plan is made before any cluster exists.

Seeds: seed slot 0 is the run's base seed (tb.seeding: `--seed`, else $COSIM_SEED, else
a fresh one) and slot i > 0 a hash of (base, i), so two runs with nearby bases share no
slot but the base.  Every case and both simulators of a slot get the same seed: cocotb
mixes the test's name into it (tb/seeding.py), so each case draws its own stimulus, and
the same stimulus on Icarus and Verilator.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path

from tb.seeding import SEED_LIMIT

__all__ = ["GROUPS", "RTL", "Job", "job_seeds", "jobs_dir", "plan", "repro_command"]

RTL = "rtl"  # the variant that is the design itself (any other is a tb.teeth mutant)
GROUPS = ("case", "seed")


@dataclass(frozen=True)
class Job:
    index: int  # position in the plan: "the first seed that hit a bin" is in this order
    variant: str  # RTL or a tb.teeth mutant
    sim: str
    slot: int  # seed slot
    seed: int
    cases: tuple[str, ...]

    @property
    def name(self) -> str:
        what = self.cases[0] if len(self.cases) == 1 else f"{len(self.cases)} cases"
        return f"{self.variant}/{self.sim}/seed {self.seed}/{what}"

    def out_dir(self, root: Path) -> Path:
        """This job's own output folder under the run's folder `root`."""
        leaf = self.cases[0] if len(self.cases) == 1 else "all-cases"
        return jobs_dir(root) / self.variant / self.sim / f"seed-{self.seed}" / leaf


def jobs_dir(root: Path) -> Path:
    """Where the jobs of a run whose folder is `root` keep their own folders."""
    return root / "jobs"


def job_seeds(base: int, count: int) -> list[int]:
    """`count` distinct seeds: the base first, then hashes of (base, slot)."""
    seeds = [base]
    slot = 0
    while len(seeds) < count:
        slot += 1
        digest = hashlib.sha256(f"{base}:{slot}".encode()).digest()
        seed = int.from_bytes(digest[:4], "little") % SEED_LIMIT
        if seed not in seeds:
            seeds.append(seed)
    return seeds[:count]


def plan(cases: list[str], sims: list[str], seeds: list[int], mutants: list[str] = (),
         mutant_seeds: int = 1, group: str = "case") -> list[Job]:
    """The jobs, RTL first: seed slot by slot (so a run cut short has swept every case
    and simulator a few times rather than one case many times), then each mutant on its
    first `mutant_seeds` slots."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, not {group!r}")
    groups = [(c,) for c in cases] if group == "case" else [tuple(cases)]
    jobs: list[Job] = []
    variants = [(RTL, seeds)] + [(m, seeds[:mutant_seeds]) for m in mutants]
    for variant, slots in variants:
        for slot, seed in enumerate(slots):
            for sim in sims:
                for g in groups:
                    jobs.append(Job(len(jobs), variant, sim, slot, seed, g))
    return jobs


def repro_command(job: Job, case: str, verilog: Path | None = None) -> str:
    """The one command that reruns `case` of `job` locally, with waves.  A mutant's run
    names the mutant's Verilog (the farm keeps it in its models folder)."""
    cmd = f"make sim SIM={job.sim} SEED={job.seed} TEST={case} WAVES=1"
    if job.variant != RTL and verilog is not None:
        cmd += f" VERILOG={shlex.quote(str(verilog))}"
    return cmd
