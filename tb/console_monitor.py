"""Console stream monitor and sink: the bytes debugcon puts out on `con`.

The RTL's `con` stream (`con__valid`, `con__ready`, `con__data[7:0]`) carries the bytes
written to I/O port 0xe9, in order.  This agent is the host-side sink: it drives
`con__ready` with a back-pressure pattern (`tb.timing`; timing rules in `tb.stream_sink`),
keeps every byte in `self.data`, and hands each one to the callbacks as `(cycle, byte)`.
"""

from __future__ import annotations

from collections.abc import Callable

from cocotb.handle import SimHandleBase

from models.contract.transaction import CONSOLE_FIELDS
from tb.stream_sink import StreamSink
from tb.timing import Pattern

__all__ = ["CONSOLE_SIGNALS", "ConsoleMonitor"]

# The RTL's console interface (`con`), derived like `req` and `cpl`.
CONSOLE_SIGNALS = ["valid", "ready", *CONSOLE_FIELDS]


class ConsoleMonitor(StreamSink):
    _signals = CONSOLE_SIGNALS

    def __init__(
        self,
        dut: SimHandleBase,
        clock: SimHandleBase,
        reset: SimHandleBase,
        period_ns: float,
        backpressure: Pattern | None = None,
        callback: Callable[[tuple[int, int]], None] | None = None,
        name: str = "con",
    ) -> None:
        self.data = bytearray()
        super().__init__(dut, name, clock, reset, period_ns, backpressure, callback)

    def _beat(self, cycle: int) -> tuple[int, int]:
        byte = int(self.bus.data.value)
        self.data.append(byte)
        return cycle, byte
