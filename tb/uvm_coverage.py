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
from models.contract.transaction import Kind, Space
from tb.coverage import ADDR_BITS, CoverageDb, byte_address, claimed_bytes, dword_name, seed_class
from tb.uvm_scoreboard import Observation, ResetObservation

__all__ = ["Coverage"]

_DEBUGCON_DW = DEBUGCON_PORT & ~3
_DEBUGCON_LANE = DEBUGCON_PORT & 3
_MEM = (Kind.MEM_READ, Kind.MEM_WRITE)
_IO = (Kind.IO_READ, Kind.IO_WRITE)
_SPACE = {Kind.MEM_READ: Space.MEM, Kind.MEM_WRITE: Space.MEM, Kind.CFG_READ: Space.CFG,
          Kind.CFG_WRITE: Space.CFG, Kind.IO_READ: Space.IO, Kind.IO_WRITE: Space.IO}
# Bin names per space and bit, built once: `_decode` runs for every request.
_BIT_BINS = {space: [(f"b{n}/set", f"b{n}/clear") for n in range(width)]
             for space, width in ADDR_BITS.items()}


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
        self._decode(obs)
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

    def _decode(self, obs: Observation) -> None:
        """`addr_bit_SPACE` and `alias_SPACE`: the request's byte address against what the
        map claims in its space (BAR0 as programmed when the request was accepted)."""
        req = obs.req
        space = _SPACE[req.kind]
        name = space.name.lower()
        byte = byte_address(req.addr, req.be)
        bits = self.db.hits[f"addr_bit_{name}"]
        for n, (set_, clear) in enumerate(_BIT_BINS[space]):
            bits[set_ if byte >> n & 1 else clear] += 1
        if space is Space.MEM and not obs.mem_enabled:
            return  # memory decoding off: nothing is claimed, so nothing is an alias
        direction = "W" if req.kind.is_write else "R"
        width = ADDR_BITS[space]
        for claimed, reg in claimed_bytes(space, obs.bar0).items():
            if req.addr == claimed & ~3 and req.be.bit_count() == 1:
                self.db.hit(f"alias_{name}", f"{reg}/lane{byte & 3}/{direction}")
            diff = byte ^ claimed
            if diff and not diff & (diff - 1) and diff < 1 << width:  # exactly one bit
                self.db.hit(f"alias_{name}", f"{reg}/b{diff.bit_length() - 1}/{direction}")

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
