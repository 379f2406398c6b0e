"""Host-memory agent: the host side of the device's requester interface (`mreq`/`mcpl`,
`intx`), on cocotb-bus.

The `mreq` sink (a `StreamSink`: back-pressure pattern on `mreq__ready`) hands every
request the device makes to a `HostPort` (`models.host_memory.HostMemory` in the cases:
RAM regions, refusals, the MSI window) and records it as `(cycle, Request)`; a read's
completion goes back on `mcpl`, after `latency` idle cycles (a pattern: True = wait one
more cycle), driven at falling edges and held until `mcpl__ready` at a rising edge.  The
`intx` monitor reports every change of the wire to the port and records `(cycle, level)`.
Without a port the host has no memory (`models.device.NoHost`): writes vanish, reads
complete UR, so a transfer started by a case that does not care ends with ERROR instead
of hanging the engine.

Signals derived from `REQUEST_FIELDS` / `COMPLETION_FIELDS`, as for `req` and `cpl`.
"""

from __future__ import annotations

import logging
from collections import deque

import cocotb
from cocotb.handle import SimHandleBase
from cocotb.simtime import get_sim_time
from cocotb.task import Task
from cocotb.triggers import Event, FallingEdge, RisingEdge, ValueChange

from models.contract.transaction import (
    COMPLETION_FIELDS,
    REQUEST_FIELDS,
    Completion,
    HostPort,
    Kind,
    Request,
)
from models.device import NoHost
from tb.stream_sink import StreamSink
from tb.timing import Pattern

__all__ = ["HostMemoryAgent"]


class _MasterRequests(StreamSink):
    _signals = ["valid", "ready", *REQUEST_FIELDS]

    def _beat(self, cycle: int) -> tuple[int, Request]:
        bus = self.bus
        req = Request(Kind(int(bus.kind.value)), int(bus.addr.value), int(bus.be.value),
                      int(bus.data.value), int(bus.tag.value))
        return cycle, req


class HostMemoryAgent:
    """Serves `mreq` from `host`, answers reads on `mcpl`, follows `intx`."""

    def __init__(self, dut: SimHandleBase, period_ns: float, *,
                 backpressure: Pattern | None = None, latency: Pattern | None = None,
                 host: HostPort | None = None) -> None:
        self.dut = dut
        self.period_ns = period_ns
        self.host: HostPort = host or NoHost()
        self.latency = latency
        self.log = logging.getLogger("cosim.tb.mreq")
        self.requests: list[tuple[int, Request]] = []
        self.intx: list[tuple[int, int]] = []
        self._cpls: deque[Completion] = deque()
        self._cpl_ready = Event()
        self.sink = _MasterRequests(dut, "mreq", dut.clk, dut.rst, period_ns, backpressure,
                                    callback=self._on_request)
        dut.mcpl__valid.value = 0
        self._tasks: list[Task[None]] = [cocotb.start_soon(self._drive_completions()),
                                         cocotb.start_soon(self._watch_intx())]

    def stop(self) -> None:
        self.sink.stop()
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    def flush(self) -> None:
        """A reset: completions not yet taken are lost, as on a real link."""
        self._cpls.clear()
        self.dut.mcpl__valid.value = 0

    def _cycle(self) -> int:
        return int(round(get_sim_time("ns") / self.period_ns + 0.5))

    def _on_request(self, item: tuple[int, Request]) -> None:
        cycle, req = item
        self.requests.append(item)
        self.log.debug("device request %s at cycle %d", req, cycle)
        if req.kind is Kind.MEM_WRITE:
            self.host.memory_write(req)
        elif req.kind is Kind.MEM_READ:
            self._cpls.append(self.host.memory_read(req))
            self._cpl_ready.set()
        else:
            raise AssertionError(f"the device issued a {req.kind.name}: only memory "
                                 f"reads and writes may be device requests ({req})")

    async def _drive_completions(self) -> None:
        dut = self.dut
        while True:
            while not self._cpls:
                self._cpl_ready.clear()
                await self._cpl_ready.wait()
            await FallingEdge(dut.clk)
            while self.latency is not None and next(self.latency):
                await FallingEdge(dut.clk)
            if not self._cpls:
                continue  # flushed by a reset meanwhile
            cpl = self._cpls.popleft()
            for name in COMPLETION_FIELDS:
                getattr(dut, f"mcpl__{name}").value = int(getattr(cpl, name))
            dut.mcpl__valid.value = 1
            while True:
                await RisingEdge(dut.clk)
                if dut.mcpl__ready.value or dut.rst.value:
                    break
            await FallingEdge(dut.clk)
            dut.mcpl__valid.value = 0

    async def _watch_intx(self) -> None:
        dut = self.dut
        level = 0
        while True:
            await ValueChange(dut.intx)
            now = int(dut.intx.value)
            if now != level:
                level = now
                self.intx.append((self._cycle(), level))
                self.host.intx(bool(level))
