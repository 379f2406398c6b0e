"""pyuvm agent: sequencer, driver and the monitors of the RTL's three streams.

The driver sends every item through the `RtlEndpoint` (whose `RequestDriver` puts it on
`req`).  The monitors publish what the RTL actually did, on analysis ports, independently
of what the driver intended:
- `RequestMonitorComp.ap`: `(cycle, Request)` for every beat the RTL accepted, and
  `reset_ap`: the cycle of every rising edge of `rst`;
- `CompletionMonitorComp.ap`: `(cycle, Completion)` for every beat on `cpl`;
- `ConsoleMonitorComp.ap`: `(cycle, byte)` for every byte on `con`.
The endpoint is shared through `ConfigDB` under "ENDPOINT".
"""

from __future__ import annotations

import dataclasses

import cocotb
from cocotb.triggers import RisingEdge
from pyuvm import ConfigDB, uvm_analysis_port, uvm_driver, uvm_monitor, uvm_sequencer

from tb.request_driver import BusAborted
from tb.request_monitor import RequestMonitor
from tb.rtl_endpoint import Outstanding, RtlEndpoint
from tb.uvm_item import ReqItem

__all__ = [
    "CompletionMonitorComp",
    "ConsoleMonitorComp",
    "CosimDriver",
    "CosimSequencer",
    "RequestMonitorComp",
]


def _endpoint(component: object) -> RtlEndpoint:
    ep = ConfigDB().get(component, "", "ENDPOINT")
    if not isinstance(ep, RtlEndpoint):
        raise TypeError(f"ConfigDB ENDPOINT must be an RtlEndpoint, not {type(ep).__name__}")
    return ep


class CosimDriver(uvm_driver):
    """Drives `ReqItem`s; assigns tags (a bus resource) so pipelined items never clash."""

    def build_phase(self) -> None:
        self.ep = _endpoint(self)
        self._tag = 0

    def _next_tag(self) -> int:
        for _ in range(256):
            self._tag = (self._tag + 1) & 0xFF
            if not self.ep.is_outstanding(self._tag):
                return self._tag
        raise RuntimeError("all 256 tags outstanding")

    async def run_phase(self) -> None:
        while True:
            item: ReqItem = await self.seq_item_port.get_next_item()
            try:
                await self._drive(item)
            finally:
                self.seq_item_port.item_done()

    async def _drive(self, item: ReqItem) -> None:
        if item.req is None:
            await self.ep.reset()
            item.done.set()
            return
        item.req = dataclasses.replace(item.req, tag=self._next_tag())
        try:
            pending = await self.ep.issue(item.req)
        except BusAborted:
            item.aborted = True
            item.done.set()
            return
        item.accepted_cycle = self.ep.cycle()
        if pending is None:  # posted
            item.done.set()
        elif item.wait:
            await self._finish(item, pending)
        else:
            cocotb.start_soon(self._finish(item, pending))

    async def _finish(self, item: ReqItem, pending: Outstanding) -> None:
        try:
            item.completion = await self.ep.complete(pending)
            item.completed_cycle = pending.cycle
        except BusAborted:
            item.aborted = True
        finally:
            item.done.set()  # also on TimeoutError, which then fails the test


class RequestMonitorComp(uvm_monitor):
    """Accepted request beats and resets, from the pins (not from the driver)."""

    def build_phase(self) -> None:
        self.ap = uvm_analysis_port("ap", self)
        self.reset_ap = uvm_analysis_port("reset_ap", self)
        self.ep = _endpoint(self)

    def connect_phase(self) -> None:
        dut = self.ep.dut
        self.monitor = RequestMonitor(dut, dut.clk, dut.rst, self.ep.period_ns,
                                      callback=self.ap.write)

    async def run_phase(self) -> None:
        rst = self.ep.dut.rst
        while True:
            await RisingEdge(rst)
            self.reset_ap.write(self.ep.cycle())


class CompletionMonitorComp(uvm_monitor):
    def build_phase(self) -> None:
        self.ap = uvm_analysis_port("ap", self)
        self.ep = _endpoint(self)

    def connect_phase(self) -> None:
        self.ep.completions.add_callback(self.ap.write)


class ConsoleMonitorComp(uvm_monitor):
    def build_phase(self) -> None:
        self.ap = uvm_analysis_port("ap", self)
        self.ep = _endpoint(self)

    def connect_phase(self) -> None:
        self.ep.console.add_callback(self.ap.write)


class CosimSequencer(uvm_sequencer):
    """The one sequencer of the agent (a named class so logs say what it is)."""
