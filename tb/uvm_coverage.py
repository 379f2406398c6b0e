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

from models.regmap import BAR0_SIZE, CONFIG_DWORDS, DEBUGCON_PORT, rng_register_at
from models.transaction import Kind
from tb.coverage import CoverageDb, seed_class
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
            reg = rng_register_at(offset) if offset < 0x10 else None
            if reg is None:
                self.db.hit("unused_offset", direction)
                return
            self.db.hit("rng_access",
                        f"{reg.name}/{direction}/{req.be.bit_count()}B/be{req.be:04b}")
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
