"""Request stream driver: puts `Request`s on the RTL's `req` valid/ready stream.

Signals are derived from `models.contract.transaction.REQUEST_FIELDS` (`req__kind`, `req__tag`, ...)
plus `valid`/`ready`, joined with Amaranth's `__` separator.

Timing (all simulators read pre-edge values right after `RisingEdge(clk)`, measured on
Icarus 11 and Verilator 5.048):
- fields and `valid` are driven while `clk` is low (at a falling edge, or at once when
  called in that half of the cycle), so they are stable at the next rising edge however
  `ready` is computed;
- a beat is accepted at the rising edge where `valid` and `ready` are both high; `valid`
  is dropped right after that edge unless the next beat follows, so back-to-back sends
  use consecutive cycles;
- an optional idle pattern (`tb.timing`) keeps `valid` low for the cycles it says before
  each beat.
The driver wakes Python once per cycle only while a beat waits for `ready`, and gives up
with `TimeoutError` after `timeout_cycles` of that.

`stimulus` digests what was driven (each beat's fields and the idle cycles before it), so
two runs can be compared: the same seed must give the same digest (tb.seeding).
"""

from __future__ import annotations

import hashlib
import logging
import struct
from typing import Any

from cocotb.handle import SimHandleBase
from cocotb.triggers import FallingEdge, Lock, RisingEdge
from cocotb_bus.drivers import BusDriver

from models.contract.transaction import REQUEST_FIELDS, Request
from tb.timing import Pattern

__all__ = ["BusAborted", "RequestDriver"]

_BEAT = struct.Struct("<BBQBIH")  # kind, tag, addr, be, data, idle cycles (capped)


class BusAborted(Exception):
    """The beat being driven was abandoned because the bus was reset."""


class RequestDriver(BusDriver):
    _signals = ["valid", "ready", *REQUEST_FIELDS]

    def __init__(
        self,
        dut: SimHandleBase,
        clock: SimHandleBase,
        idle: Pattern | None = None,
        name: str = "req",
        timeout_cycles: int = 100_000,
    ) -> None:
        super().__init__(dut, name, clock, bus_separator="__")
        self.log = logging.getLogger(f"cosim.tb.{name}")
        self.idle = idle
        self.timeout_cycles = timeout_cycles
        self._lock = Lock()
        self._generation = 0  # bumped by abort(): beats of an older generation give up
        self.beats = 0
        self.stimulus = hashlib.blake2b(digest_size=8)
        self.last_stall_cycles = 0  # cycles the last beat waited for `ready`
        self.bus.valid.value = 0
        self.log.debug("request driver on %s, idle pattern %s", name, idle)

    def abort(self) -> None:
        """Drop `valid` and make any beat in progress raise `BusAborted` (bus reset)."""
        self._generation += 1
        self.bus.valid.value = 0

    def stop(self) -> None:
        """End the base class's (unused) queue coroutine; `kill()` is deprecated in cocotb 2."""
        if self._thread is not None:
            self._thread.cancel()
            self._thread = None

    async def _driver_send(self, transaction: Request, sync: bool = True, **_: Any) -> None:
        # `sync` is meaningless here: every beat is aligned to a falling edge anyway.
        req = transaction
        clk = self.clock
        generation = self._generation
        async with self._lock:
            # Between a falling and a rising edge (clk low) the beat can be driven at once,
            # e.g. right after a sink took a completion at a falling edge: that saves a
            # cycle and a trigger per back-to-back transaction.  Otherwise align.
            if self.idle is not None or clk.value != 0:
                await FallingEdge(clk)
            idle = 0
            if self.idle is not None:
                while next(self.idle):
                    idle += 1
                    await FallingEdge(clk)
            if generation != self._generation:
                raise BusAborted(f"bus reset before {req} was driven")
            bus = self.bus
            bus.kind.value = int(req.kind)
            bus.tag.value = req.tag
            bus.addr.value = req.addr
            bus.be.value = req.be
            bus.data.value = req.data
            bus.valid.value = 1
            stalled = 0
            while True:
                await RisingEdge(clk)
                if generation != self._generation:
                    raise BusAborted(f"bus reset while driving {req}")
                if bus.ready.value:
                    break
                stalled += 1
                if stalled >= self.timeout_cycles:
                    bus.valid.value = 0
                    raise TimeoutError(f"RTL did not accept {req} within {stalled} cycles")
            bus.valid.value = 0
            self.beats += 1
            self.stimulus.update(_BEAT.pack(req.kind, req.tag, req.addr, req.be, req.data,
                                            min(idle, 0xFFFF)))
            self.last_stall_cycles = stalled
