"""Request stream monitor: every beat the RTL accepts on `req`, as a `Request`.

Passive.  A beat is accepted at a rising edge of `clk` where `valid` and `ready` are both
high and `rst` is low (values are read pre-edge, right after `RisingEdge`).  While
`valid` is low the monitor sleeps on `RisingEdge(valid)` instead of waking every cycle.
Each observed request goes to the callbacks (`add_callback`) with the cycle it was accepted
in, as `(cycle, Request)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cocotb.handle import SimHandleBase
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from cocotb_bus.monitors import BusMonitor

from models.contract.transaction import REQUEST_FIELDS, Kind, Request

__all__ = ["RequestMonitor"]


class RequestMonitor(BusMonitor):
    _signals = ["valid", "ready", *REQUEST_FIELDS]

    def __init__(
        self,
        dut: SimHandleBase,
        clock: SimHandleBase,
        reset: SimHandleBase,
        period_ns: float,
        callback: Callable[[tuple[int, Request]], None] | None = None,
        name: str = "req",
    ) -> None:
        self._period_ns = period_ns
        super().__init__(dut, name, clock, reset=reset, callback=callback, bus_separator="__")
        self.log = logging.getLogger(f"cosim.tb.{name}.monitor")

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.cancel()
            self._thread = None

    async def _monitor_recv(self) -> None:
        bus = self.bus
        clk = self.clock
        # Start between edges: at time 0 the testbench's first writes (valid low, reset
        # high) are not applied yet and the undriven inputs still read Z.
        await FallingEdge(clk)
        while True:
            await RisingEdge(clk)
            if bus.valid.value and bus.ready.value and not self.in_reset:
                req = Request(
                    Kind(int(bus.kind.value)),
                    int(bus.addr.value),
                    int(bus.be.value),
                    int(bus.data.value),
                    int(bus.tag.value),
                )
                cycle = int(get_sim_time("ns") // self._period_ns)
                self.log.debug("accepted %s", req)
                self._recv((cycle, req))
            await ReadOnly()
            if not bus.valid.value:
                await RisingEdge(bus.valid)
