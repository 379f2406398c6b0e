"""pyuvm environment and the base test every test case derives from.

    sequences -> CosimSequencer -> CosimDriver -> RtlEndpoint -> RTL pins
    RTL pins -> RequestMonitorComp / CompletionMonitorComp / ConsoleMonitorComp
             -> Scoreboard (vs models.device.Device) -> Coverage

`CosimTest.run_phase` starts the endpoint (clock, reset), reads the device back against
the register map's reset values (`tb.reset_check`), then runs the test's `body()`
once per timing profile in `timings` (idle cycles on `req`, back-pressure on `cpl` and
`con`), waiting after each until every expected completion and console byte was seen.
"""

from __future__ import annotations

import random

import cocotb
from pyuvm import ConfigDB, uvm_env, uvm_sequence, uvm_test

from tb.coverage import COVERPOINTS
from tb.drain import drain_streams
from tb.rtl_endpoint import RtlEndpoint
from tb.timing import make_pattern
from tb.uvm_agent import (
    CompletionMonitorComp,
    ConsoleMonitorComp,
    CosimDriver,
    CosimSequencer,
    RequestMonitorComp,
)
from tb.uvm_coverage import Coverage
from tb.uvm_scoreboard import Scoreboard
from tb.uvm_sequences import EnableSeq, ResetReadbackSeq

__all__ = ["ALL_COVERPOINTS", "TIMING_PROFILES", "CosimEnv", "CosimTest"]

# name -> (idle pattern on req, back-pressure on cpl, back-pressure on con)
TIMING_PROFILES: dict[str, tuple[str, str, str]] = {
    "fast": ("none", "none", "none"),
    "regular": ("cycle", "alternate", "cycle"),
    "random": ("random", "random", "bursty"),
}
ALL_COVERPOINTS = tuple(COVERPOINTS)


class CosimEnv(uvm_env):
    def build_phase(self) -> None:
        self.seqr = CosimSequencer("seqr", self)
        self.driver = CosimDriver("driver", self)
        self.req_mon = RequestMonitorComp("req_mon", self)
        self.cpl_mon = CompletionMonitorComp("cpl_mon", self)
        self.con_mon = ConsoleMonitorComp("con_mon", self)
        self.scoreboard = Scoreboard("scoreboard", self)
        self.coverage = Coverage("coverage", self)

    def connect_phase(self) -> None:
        self.driver.seq_item_port.connect(self.seqr.seq_item_export)
        self.req_mon.ap.connect(self.scoreboard.req_export)
        self.req_mon.reset_ap.connect(self.scoreboard.reset_export)
        self.cpl_mon.ap.connect(self.scoreboard.cpl_export)
        self.con_mon.ap.connect(self.scoreboard.con_export)
        self.scoreboard.obs_ap.connect(self.coverage.analysis_export)


class CosimTest(uvm_test):
    """Base test: subclasses set `timings`, `required` and implement `body()`."""

    timings: tuple[str, ...] = tuple(TIMING_PROFILES)
    required: tuple[str, ...] = ()  # coverpoints this test must complete
    drain_timeout_cycles = 200_000

    def build_phase(self) -> None:
        # cocotb reseeds `random` before each test from the run's seed and the test's
        # name (tb.seeding): the same seed gives this test the same stimulus.
        self.rng = random.Random(random.getrandbits(64))
        self.ep = RtlEndpoint(cocotb.top)
        ConfigDB().set(None, "*", "ENDPOINT", self.ep)
        ConfigDB().set(None, "*", "REQUIRED_COVERAGE", self.required)
        ConfigDB().set(None, "*", "TEST_NAME", type(self).__name__)
        self.env = CosimEnv("env", self)

    async def run_phase(self) -> None:
        self.raise_objection()
        try:
            await self.ep.start()
            await self.run(ResetReadbackSeq("reset_readback"))
            for profile in self.timings:
                self.apply_timing(profile)
                self.logger.info("%s: timing profile %s", type(self).__name__, profile)
                await self.body()
                await self.drain()
        finally:
            self.ep.log_stimulus(type(self).__name__)
            self.drop_objection()

    async def body(self) -> None:
        raise NotImplementedError

    def apply_timing(self, profile: str) -> None:
        idle, cpl_bp, con_bp = TIMING_PROFILES[profile]
        seed = self.rng.getrandbits(32)
        self.ep.driver.idle = make_pattern(idle, seed)
        self.ep.completions.backpressure = make_pattern(cpl_bp, seed + 1)
        self.ep.console.backpressure = make_pattern(con_bp, seed + 2)

    async def run(self, seq: uvm_sequence) -> uvm_sequence:
        await seq.start(self.env.seqr)
        return seq

    async def enable(self) -> None:
        await self.run(EnableSeq("enable"))

    async def drain(self) -> None:
        """Wait until the scoreboard saw every expected completion and console byte and the
        RTL offers nothing more (`tb.drain.drain_streams`: lost or extra console bytes fail
        by assertion, the timeout is the last line of defence)."""
        sb = self.env.scoreboard
        await drain_streams(
            self.ep.dut, self.ep.period_ns,
            pending_completions=lambda: sb.pending_completions,
            pending_console=lambda: sb.pending_console,
            describe_missing=sb.missing_console,
            timeout_cycles=self.drain_timeout_cycles,
        )
