"""Base of the sink monitors: observe a device->host valid/ready stream and drive `ready`.

The testbench is the sink of the RTL's `cpl` and `con` streams, so their monitors also
own `ready`, with a back-pressure pattern from `tb.timing`.

Timing: at every falling edge of `clk` the sink decides `ready` for the next rising edge
(pattern: pause -> 0).  `valid` and the payload are settled by then and do not depend on
`ready` (a valid/ready source must not wait for `ready`), so a beat whose `valid` is high at
the falling edge with `ready` set is the one transferred at the next rising edge; it is
reported right away, half a cycle before that edge.  With `valid` low the sink sleeps on
`RisingEdge(valid)`, so an idle stream costs no Python per cycle.
"""

from __future__ import annotations

import logging
from typing import Any

from cocotb.handle import SimHandleBase
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, RisingEdge
from cocotb_bus.monitors import BusMonitor

from tb.timing import Pattern

__all__ = ["StreamSink"]


class StreamSink(BusMonitor):
    """Subclasses set `_signals` (with "valid" and "ready") and implement `_beat()`."""

    def __init__(
        self,
        dut: SimHandleBase,
        name: str,
        clock: SimHandleBase,
        reset: SimHandleBase,
        period_ns: float,
        backpressure: Pattern | None = None,
        callback: Any = None,
    ) -> None:
        self.backpressure = backpressure
        self._period_ns = period_ns
        self.beats = 0
        self.stall_cycles = 0  # cycles with `valid` high and `ready` held low by the pattern
        super().__init__(dut, name, clock, reset=reset, callback=callback, bus_separator="__")
        self.log = logging.getLogger(f"cosim.tb.{name}")
        self.bus.ready.value = 0
        self.log.debug("sink on %s, back-pressure %s", name, backpressure)

    def stop(self) -> None:
        """Cancel the monitor coroutine (`kill()` is deprecated in cocotb 2)."""
        if self._thread is not None:
            self._thread.cancel()
            self._thread = None

    def _beat(self, cycle: int) -> Any:
        """Capture the payload of the beat transferred at `cycle` (the next rising edge)."""
        raise NotImplementedError

    async def _monitor_recv(self) -> None:
        bus = self.bus
        clk = self.clock
        while True:
            await FallingEdge(clk)
            if self.in_reset:
                bus.ready.value = 0
                continue
            if not bus.valid.value:
                # Idle: `ready` keeps its value (it does not matter while `valid` is low).
                await RisingEdge(bus.valid)
                continue
            pause = self.backpressure is not None and next(self.backpressure)
            bus.ready.value = 0 if pause else 1
            if pause:
                self.stall_cycles += 1
                continue
            # Handshake at the next rising edge: cycle number of that edge.
            cycle = int(round(get_sim_time("ns") / self._period_ns + 0.5))
            self.beats += 1
            self._recv(self._beat(cycle))
