"""Functional coverage subscriber: classifies what the scoreboard checked into bins.

Input: `Observation`s and `ResetObservation`s from `Scoreboard.obs_ap` (so only behaviour
the RTL really showed, and was checked, counts).  Bins: `tb.coverage.COVERPOINTS`.
`report_phase` logs every coverpoint, saves the hits as JSON when COSIM_COVERAGE_DIR is
set (for the regression's merged report), and fails the test if a coverpoint the test
requires (ConfigDB "REQUIRED_COVERAGE") has an empty bin.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyuvm import ConfigDB, uvm_subscriber

from models.contract.regmap import BAR0_SIZE, CONFIG_DWORDS, DEBUGCON_PORT, rng_register_at
from models.contract.transaction import Kind
from tb.coverage import CoverageDb, dword_name, seed_class
from tb.uvm_scoreboard import Observation, ResetObservation

__all__ = ["Coverage"]

_DEBUGCON_DW = DEBUGCON_PORT & ~3
_DEBUGCON_LANE = DEBUGCON_PORT & 3
_MEM = (Kind.MEM_READ, Kind.MEM_WRITE)
_IO = (Kind.IO_READ, Kind.IO_WRITE)


class Coverage(uvm_subscriber):
    def build_phase(self) -> None:
        self.db = CoverageDb()
        self._min_con_write_latency: int | None = None
        # A read of RNG64's low DW waits here for the next observation: the high DW read
        # at once after it makes an 8-byte read, anything else leaves it alone.
        self._rng64_low_pending = False
        self.required: tuple[str, ...] = tuple(ConfigDB().get(self, "", "REQUIRED_COVERAGE"))
        self.test_name: str = ConfigDB().get(self, "", "TEST_NAME")

    def write(self, obs: Observation | ResetObservation) -> None:
        if isinstance(obs, ResetObservation):
            self._reset(obs)
        else:
            self._transaction(obs)

    def _reset(self, obs: ResetObservation) -> None:
        if obs.pending_completions:
            self.db.hit("reset_mid_stream", "pending_completion")
        if obs.console_backlog:
            self.db.hit("reset_mid_stream", "console_backlog")
        if obs.seeding:
            self.db.hit("reset_mid_stream", "seeding")

    def _transaction(self, obs: Observation) -> None:
        req = obs.req
        self._rng64(obs)
        self.db.hit("kind", req.kind.name)
        direction = "W" if req.kind.is_write else "R"
        if req.kind in _MEM:
            if not obs.mem_enabled or not obs.in_bar:
                if req.kind.posted:
                    self.db.hit("unsupported", "posted_dropped")
                else:
                    cause = "mem_command_clear" if not obs.mem_enabled else "mem_outside_bar"
                    self.db.hit("unsupported", cause)
                return
            offset = req.addr % BAR0_SIZE
            reg = rng_register_at(offset)
            if reg is None:
                self.db.hit("unused_offset", direction)
                return
            name = dword_name(reg, offset & ~3)
            self.db.hit("rng_access",
                        f"{name}/{direction}/{req.be.bit_count()}B/be{req.be:04b}")
            if reg.name == "CAPS" and not req.kind.is_write:
                self.db.hit("rng64", "caps_read")
            if reg.name == "SEED" and req.kind.is_write and req.be == 0xF:
                self.db.hit("seed_class", seed_class(req.data))
            if reg.name == "RNG" and not req.kind.is_write and obs.seeding:
                self.db.hit("read_during_seeding", "hit")
        elif req.kind in _IO:
            if req.addr != _DEBUGCON_DW:
                self.db.hit("unsupported", "io_other_port")
            elif not req.be >> _DEBUGCON_LANE & 1:
                self.db.hit("unsupported", "io_lane_not_enabled")
            elif not req.kind.is_write:
                self.db.hit("debugcon", "read")
            else:
                self.db.hit("debugcon", "write")
                self._con_write_latency(obs.latency)
        else:
            cd = CONFIG_DWORDS.get(req.addr)
            self.db.hit("config_dword", f"{cd.name if cd else 'unimplemented'}/{direction}")

    def _rng64(self, obs: Observation) -> None:
        """RNG64 reads: a low-DW read followed at once by a high-DW read is an 8-byte read
        (that is how `Host` splits it); any other neighbour leaves either DW alone."""
        req = obs.req
        dw = None
        if req.kind is Kind.MEM_READ and obs.mem_enabled and obs.in_bar:
            reg = rng_register_at(req.addr % BAR0_SIZE)
            if reg is not None and reg.name == "RNG64":
                dw = (req.addr % BAR0_SIZE & ~3) - reg.offset  # 0: low DW, 4: high DW
        low_before, self._rng64_low_pending = self._rng64_low_pending, dw == 0
        if low_before:
            self.db.hit("rng64", "read8" if dw == 4 else "low_alone")
        if dw is None:
            return
        if obs.seeding:
            self.db.hit("rng64", "during_seeding")
        if dw == 4 and not low_before:
            self.db.hit("rng64", "high_alone")

    def _con_write_latency(self, latency: int | None) -> None:
        # Unstalled, a debugcon write always takes the same number of cycles; a write that
        # waited for FIFO space takes longer.  The minimum seen is the unstalled latency.
        if latency is None:
            return
        if self._min_con_write_latency is None or latency < self._min_con_write_latency:
            self._min_con_write_latency = latency
        elif latency > self._min_con_write_latency + 1:
            self.db.hit("debugcon", "write_stalled")

    def report_phase(self) -> None:
        for line in self.db.report(self.required):
            self.logger.info("coverage: %s", line)
        out = os.environ.get("COSIM_COVERAGE_DIR")
        if out:
            self.db.save(Path(out) / f"{self.test_name}.json")
        unmet = self.db.unmet(self.required)
        if unmet:
            raise AssertionError(f"required coverpoints not complete: {', '.join(unmet)}")
