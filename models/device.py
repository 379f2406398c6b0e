"""Transaction-level golden model of the whole device: config space, RNG in BAR0, debugcon.

Pure Python, no cocotb.  It answers `Request`s exactly as the RTL top does (docs/rtl.md),
without timing: the testbench's scoreboard feeds it every request it observes on the RTL
and compares completions, and the bridge's model backend serves QEMU from it.

Routing (the same as rtl/top.py):
- CFG_READ / CFG_WRITE -> config space (always claimed: we are the only function).
- MEM_* with COMMAND.MEM set and the address inside BAR0 -> RNG registers.
- IO_* to the DW at 0xe8 with byte lane 1 enabled -> debugcon.
- anything else: a non-posted request completes UR; a posted one is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from models.contract.regmap import (
    BAR0_SIZE,
    COMMAND_MEMORY,
    CONFIG_DWORDS,
    DEBUGCON_PORT,
    DEBUGCON_READ_VALUE,
    RNG_NEXT_DWORDS,
    RNG_REGISTERS,
)
from models.contract.transaction import (
    Completion,
    Kind,
    Request,
    Status,
    StreamCompletions,
    stream_lane,
    stream_requests,
)
from models.glibc_rand import GlibcRand

__all__ = ["ConfigSpace", "Debugcon", "Device", "Rng"]

log = logging.getLogger("cosim.model")

_RNG = {reg.name: reg for reg in RNG_REGISTERS}
_NEXT_DWORDS = frozenset(RNG_NEXT_DWORDS)
# Constant registers are single DWs: offset -> value.
_CONSTANTS = {reg.offset: reg.value for reg in RNG_REGISTERS if reg.value is not None}


def _be_mask(be: int) -> int:
    return sum(0xFF << (8 * i) for i in range(4) if be >> i & 1)


class ConfigSpace:
    """Type-0 header built from `CONFIG_DWORDS`: reset values and per-bit write masks."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._dw = {off: d.reset for off, d in CONFIG_DWORDS.items()}

    def read(self, offset: int) -> int:
        return self._dw.get(offset, 0)  # unimplemented DWs (any offset not listed) read 0

    def write(self, offset: int, be: int, data: int) -> None:
        reg = CONFIG_DWORDS.get(offset)
        if reg is None:
            return
        mask = reg.writable & _be_mask(be)
        self._dw[offset] = (self._dw[offset] & ~mask) | (data & mask)

    @property
    def command(self) -> int:
        return self._dw[0x04] & 0xFFFF

    @property
    def bar0(self) -> int:
        return self._dw[0x10] & ~(BAR0_SIZE - 1)

    def claims_memory(self, addr: int) -> bool:
        dw = self._dw  # inlined `command`/`bar0`: called on every BAR access of the bridge
        return bool(dw[0x04] & COMMAND_MEMORY) and (
            addr & ~(BAR0_SIZE - 1) == dw[0x10] & ~(BAR0_SIZE - 1))


class Rng:
    """The RNG registers of BAR0 (semantics in `models.contract.regmap.RNG_REGISTERS`).

    A read of any DW in `RNG_NEXT_DWORDS` (RNG, and each DW of RNG64) returns the next
    number; constant registers (ID, CAPS) return their value; SEED and unused offsets 0.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._gen = GlibcRand(1)  # before any SEED write: as after srand(1)

    def read(self, offset: int) -> int:
        if offset in _NEXT_DWORDS:
            return self._gen.next()  # advances whatever the byte enables
        return _CONSTANTS.get(offset, 0)  # SEED and unused offsets read 0

    def write(self, offset: int, be: int, data: int) -> None:
        if offset == _RNG["SEED"].offset and be == 0xF:
            self._gen.seed(data)
        # partial SEED writes, writes to RNG, RNG64, ID, CAPS and unused offsets are ignored


class Debugcon:
    """QEMU's debugcon: byte lane 1 of the I/O DW at 0xe8 is port 0xe9."""

    DW = DEBUGCON_PORT & ~3
    LANE = DEBUGCON_PORT & 3

    def __init__(self, sink: Callable[[bytes], None] | None) -> None:
        self._sink = sink

    def claims(self, addr: int, be: int) -> bool:
        return addr == self.DW and bool(be >> self.LANE & 1)

    def read(self) -> int:
        return DEBUGCON_READ_VALUE << (8 * self.LANE)

    def write(self, data: int) -> None:
        if self._sink is not None:
            self._sink(bytes([data >> (8 * self.LANE) & 0xFF]))

    def write_bytes(self, data: bytes) -> None:
        """A `write` per byte of `data` (each in this port's lane), as one sink call."""
        if self._sink is not None and data:
            self._sink(bytes(data))


class Device:
    """The golden model of `rtl.top.Top`, usable as an `Endpoint`."""

    def __init__(self, console_sink: Callable[[bytes], None] | None = None) -> None:
        self.config = ConfigSpace()
        self.rng = Rng()
        self.debugcon = Debugcon(console_sink)

    def handle(self, req: Request) -> Completion | None:
        kind = req.kind
        data: int | None = None  # None: unclaimed
        # Memory reads first: they are what a guest does most (every RNG read).
        if kind is Kind.MEM_READ:
            if self.config.claims_memory(req.addr):
                data = self.rng.read(req.addr % BAR0_SIZE)
        elif kind is Kind.MEM_WRITE:
            if self.config.claims_memory(req.addr):
                self.rng.write(req.addr % BAR0_SIZE, req.be, req.data)
            else:
                log.debug("dropped unclaimed posted %s", req)
            return None  # posted (PCIe 2.4.1): no completion, claimed or not
        elif kind is Kind.CFG_READ:
            data = self.config.read(req.addr)
        elif kind is Kind.CFG_WRITE:
            self.config.write(req.addr, req.be, req.data)
            data = 0
        elif kind is Kind.IO_READ:
            if self.debugcon.claims(req.addr, req.be):
                data = self.debugcon.read()
        elif kind is Kind.IO_WRITE and self.debugcon.claims(req.addr, req.be):
            self.debugcon.write(req.data)
            data = 0
        if data is None:
            log.debug("unsupported request: %s", req)
            return Completion(req.tag, Status.UR, 0)
        return Completion(req.tag, Status.SC, data)

    async def transact(self, req: Request) -> Completion | None:
        return self.handle(req)

    async def transact_all(self, reqs: Sequence[Request]) -> list[Completion | None]:
        return [self.handle(req) for req in reqs]

    async def io_write_stream(self, port: int, data: bytes, tag: int) -> StreamCompletions:
        """`stream_requests(port, data, tag)` as `handle` serves each (the `Endpoint`
        protocol's optional stream method), without a `Request` or `Completion` per byte:
        a claimed debugcon write only hands its byte to the sink and completes SC with
        data 0, so the whole stream is one sink call and one result."""
        dw, be, _ = stream_lane(port)
        Request(Kind.IO_WRITE, dw, be, 0, tag)  # the same validation as the slow path
        if not self.debugcon.claims(dw, be):  # not the debugcon: as the slow path does
            return StreamCompletions.of(tag, [self.handle(req) for req in
                                              stream_requests(port, data, tag)])
        self.debugcon.write_bytes(data)
        return StreamCompletions.alike(tag, len(data), Status.SC, 0)

    async def drain_console(self) -> None:
        """Nothing to drain: console bytes reach the sink as they are written."""

    async def reset(self) -> None:
        self.config.reset()
        self.rng.reset()
