"""Completion stream monitor and sink: every beat on `cpl`, as `(cycle, Completion)`.

Signals derived from `models.contract.transaction.COMPLETION_FIELDS` plus `valid`/`ready`.  The
testbench is the completion sink, so this agent drives `cpl__ready` with a back-pressure
pattern (`tb.timing`); timing rules in `tb.stream_sink`.
"""

from __future__ import annotations

from collections.abc import Callable

from cocotb.handle import SimHandleBase

from models.contract.transaction import COMPLETION_FIELDS, Completion, Status
from tb.stream_sink import StreamSink
from tb.timing import Pattern

__all__ = ["CompletionMonitor"]


class CompletionMonitor(StreamSink):
    _signals = ["valid", "ready", *COMPLETION_FIELDS]

    def __init__(
        self,
        dut: SimHandleBase,
        clock: SimHandleBase,
        reset: SimHandleBase,
        period_ns: float,
        backpressure: Pattern | None = None,
        callback: Callable[[tuple[int, Completion]], None] | None = None,
        name: str = "cpl",
    ) -> None:
        super().__init__(dut, name, clock, reset, period_ns, backpressure, callback)

    def _beat(self, cycle: int) -> tuple[int, Completion]:
        bus = self.bus
        status = int(bus.status.value)
        try:
            st = Status(status)
        except ValueError:
            # Not a status the interface defines: a protocol error, reported loudly.
            raise AssertionError(f"completion with undefined status {status}") from None
        cpl = Completion(int(bus.tag.value), st, int(bus.data.value))
        self.log.debug("completion %s at cycle %d", cpl, cycle)
        return cycle, cpl
