"""Scoreboard: the RTL's observed behaviour against the golden model `models.device.Device`.

Fed only by monitors (what the pins showed), never by the driver:
- every accepted request goes into the model at once (the model has no timing), which
  yields the expected completion, if any, and the expected console bytes;
- completions must match the expected ones in order, tag, status and data;
- console bytes must match the model's byte stream in order, none missing, none extra;
- a reset abandons pending completions and the console bytes not yet out (the RTL's FIFO
  is reset), and restarts the model.
Each checked transaction is published on `obs_ap` as an `Observation` for coverage, and
each reset as a `ResetObservation`.

The first mismatch fails the test at once: the scoreboard raises `Mismatch` (an
AssertionError naming the transaction, what the model expected and what the RTL showed)
inside the monitor callback that delivered it, and cocotb ends a test whose task raised.
Waiting for the drain or a completion timeout instead would report the same bug
100000-200000 cycles later as "still pending", far from its cause.  `check_phase` still
fails on anything left over (completions or console bytes that never came).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NoReturn

from pyuvm import uvm_analysis_port, uvm_scoreboard, uvm_subscriber

from models.contract.regmap import BAR0_SIZE, COMMAND_MEMORY, RNG_REGISTERS
from models.contract.transaction import Completion, Kind, Request
from models.device import Device
from models.glibc_rand import DEGREE, DISCARD, SEPARATION

__all__ = ["SEEDING_CYCLES", "Mismatch", "Observation", "ResetObservation", "Scoreboard"]

# Hardware seeding work, one state word per cycle (rtl/rng.py): 30 LCG words, 3 copies,
# 310 discarded outputs.  A RNG read accepted within this many cycles of a SEED write
# (or of a reset, which seeds with 1) races the seeding.
SEEDING_CYCLES = (DEGREE - 1) + SEPARATION + DISCARD
_SEED_OFFSET = next(r.offset for r in RNG_REGISTERS if r.name == "SEED")
_MAX_REPORTED = 20  # check_phase lists this many leftovers at most (keeps logs readable)


class Mismatch(AssertionError):
    """The RTL differs from the model: raised at the first difference."""


@dataclass(frozen=True)
class Observation:
    """One request as the RTL handled it, with the device state it met."""

    req: Request
    accepted: int  # cycle
    completion: Completion | None  # None: posted
    completed: int | None  # cycle
    mem_enabled: bool  # COMMAND.MEM at acceptance
    in_bar: bool  # address inside BAR0 as programmed at acceptance
    seeding: bool  # accepted while a seeding was (nominally) in progress
    bar0: int = 0  # BAR0's base at acceptance (what a memory address is decoded against)

    @property
    def latency(self) -> int | None:
        return None if self.completed is None else self.completed - self.accepted


@dataclass(frozen=True)
class ResetObservation:
    cycle: int
    pending_completions: int
    console_backlog: int
    seeding: bool


class Scoreboard(uvm_scoreboard):
    def build_phase(self) -> None:
        imp = uvm_subscriber.uvm_AnalysisImp
        self.req_export = imp("req_export", self, self._on_request)
        self.cpl_export = imp("cpl_export", self, self._on_completion)
        self.con_export = imp("con_export", self, self._on_console)
        self.reset_export = imp("reset_export", self, self._on_reset)
        self.obs_ap = uvm_analysis_port("obs_ap", self)
        self.errors: list[str] = []
        self.expected_console = bytearray()
        self.observed_console = bytearray()
        # For each expected console byte, the I/O write that produced it (cycle, request):
        # a mismatch names the transaction, not only the byte's index in the stream.
        self._console_source: list[tuple[int, Request]] = []
        self._expected: deque[tuple[Request, int, Completion, bool, bool, bool, int]] = deque()
        self._model = Device(self.expected_console.extend)
        self._seeded_at = 0
        self.completions_checked = 0
        self.console_lost_to_reset = 0

    # -- inputs --------------------------------------------------------------------------

    def _fail(self, msg: str) -> NoReturn:
        # Not logged here: cocotb reports the failing test with this message, and a planted
        # mismatch (tb.cases_planted) must not leave an ERROR line in a passing run.
        self.errors.append(msg)
        raise Mismatch(msg)

    def _on_request(self, item: tuple[int, Request]) -> None:
        cycle, req = item
        cfg = self._model.config
        mem_enabled = bool(cfg.command & COMMAND_MEMORY)
        bar0 = cfg.bar0
        in_bar = req.addr & ~(BAR0_SIZE - 1) == bar0
        seeding = cycle - self._seeded_at < SEEDING_CYCLES
        console_before = len(self.expected_console)
        expected = self._model.handle(req)
        self._console_source.extend(
            [(cycle, req)] * (len(self.expected_console) - console_before))
        if (req.kind is Kind.MEM_WRITE and mem_enabled and in_bar and req.be == 0xF
                and req.addr % BAR0_SIZE == _SEED_OFFSET):
            self._seeded_at = cycle
        if expected is None:
            self.obs_ap.write(Observation(req, cycle, None, None, mem_enabled, in_bar, seeding,
                                          bar0))
        else:
            self._expected.append((req, cycle, expected, mem_enabled, in_bar, seeding, bar0))

    def _on_completion(self, item: tuple[int, Completion]) -> None:
        cycle, cpl = item
        if not self._expected:
            self._fail(f"cycle {cycle}: RTL completed {cpl} but no request is outstanding "
                       f"(tag {cpl.tag} matches none)")
        req, accepted, expected, mem_enabled, in_bar, seeding, bar0 = self._expected.popleft()
        self.completions_checked += 1
        if cpl != expected:
            self._fail(f"cycle {cycle}: {req} (accepted at cycle {accepted}) completed as "
                       f"{cpl}, the model expects {expected}")
        self.obs_ap.write(Observation(req, accepted, cpl, cycle, mem_enabled, in_bar, seeding,
                                      bar0))

    def _on_console(self, item: tuple[int, int]) -> None:
        cycle, byte = item
        index = len(self.observed_console)
        self.observed_console.append(byte)
        if index >= len(self.expected_console):
            last = (f"; the last byte came from {self._console_source[-1][1]}"
                    if self._console_source else "")
            self._fail(f"cycle {cycle}: console byte #{index} is {byte:#04x}, with no I/O write "
                       f"for it (the model's stream has {len(self.expected_console)} "
                       f"bytes{last})")
        elif self.expected_console[index] != byte:
            self._fail(f"cycle {cycle}: console byte #{index} is {byte:#04x}, the model expects "
                       f"{self.expected_console[index]:#04x} ({self.console_source(index)})")

    def console_source(self, index: int) -> str:
        """Which I/O write produced expected console byte `index`."""
        written, req = self._console_source[index]
        return f"written by {req} accepted at cycle {written}"

    def _on_reset(self, cycle: int) -> None:
        backlog = len(self.expected_console) - len(self.observed_console)
        self.obs_ap.write(ResetObservation(cycle, len(self._expected), max(backlog, 0),
                                           cycle - self._seeded_at < SEEDING_CYCLES))
        if self._expected:
            self.logger.info("reset at cycle %d abandons %d pending completions", cycle,
                             len(self._expected))
        self._expected.clear()
        if backlog > 0:
            # Bytes still in the RTL's FIFO are lost with it; the I/O writes completed.
            self.console_lost_to_reset += backlog
            del self.expected_console[len(self.observed_console):]
            del self._console_source[len(self.observed_console):]
        self._model = Device(self.expected_console.extend)
        self._seeded_at = cycle  # reset seeds the generator with 1, in hardware time too

    # -- results -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Expected completions and console bytes not yet seen."""
        return self.pending_completions + self.pending_console

    @property
    def pending_completions(self) -> int:
        return len(self._expected)

    @property
    def pending_console(self) -> int:
        # Never negative: a byte the model never wrote fails at once (`_on_console`) and
        # must not net out a byte still missing.
        return max(len(self.expected_console) - len(self.observed_console), 0)

    def missing_console(self) -> str:
        """The first expected console byte not seen yet, and where it came from."""
        index = len(self.observed_console)
        return (f"{self.pending_console} console bytes written but never output, the first "
                f"#{index} = {self.expected_console[index]:#04x} "
                f"({self.console_source(index)})")

    def check_phase(self) -> None:
        problems = list(self.errors)
        for req, accepted, expected, *_ in self._expected:
            problems.append(f"{req} accepted at cycle {accepted} never completed "
                            f"(expected {expected})")
        if self.pending_console > 0:
            problems.append(self.missing_console())
        self.logger.info(
            "scoreboard: %d completions checked, %d console bytes checked, "
            "%d console bytes lost to resets, %d problems",
            self.completions_checked, len(self.observed_console),
            self.console_lost_to_reset, len(problems),
        )
        if problems:
            shown = "\n  ".join(problems[:_MAX_REPORTED])
            raise Mismatch(f"RTL differs from the model ({len(problems)} problems):\n"
                           f"  {shown}")
