"""Transaction-level golden model of the whole device: config space, RNG and its DMA
engine in BAR0, debugcon, the interrupt.

Pure Python, no cocotb.  It answers `Request`s exactly as the RTL top does (docs/rtl.md),
without timing: the testbench's scoreboard feeds it every request it observes on the RTL
and compares completions, and the bridge's model backend serves QEMU from it.

Routing (the same as rtl/top.py):
- CFG_READ / CFG_WRITE -> config space (always claimed: we are the only function).
- MEM_* with COMMAND.MEM set and the address inside BAR0 -> RNG and DMA registers.
- IO_* to the DW at 0xe8 with byte lane 1 enabled -> debugcon.
- anything else: a non-posted request completes UR; a posted one is dropped.

Without timing a DMA transfer happens entirely inside the START write: its memory writes
and flush reads go to the `HostPort`, then the interrupt.  The RTL takes cycles, but holds
SEED writes and reads of numbers while busy, so both consume the generator in the same
order; only DMA_STATUS.BUSY is ever seen on the RTL and never here (docs/dma.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from models.contract.regmap import (
    BAR0_SIZE,
    COMMAND_INTX_DISABLE,
    COMMAND_MASTER,
    COMMAND_MEMORY,
    CONFIG_DWORDS,
    DEBUGCON_PORT,
    DEBUGCON_READ_VALUE,
    DMA_CTRL_IRQ_EN,
    DMA_CTRL_START,
    DMA_MAX_LEN,
    DMA_STATUS_DONE,
    DMA_STATUS_ERROR,
    INT_STATUS_DMA,
    MSI_CAP,
    MSI_CONTROL_ENABLE,
    RNG_NEXT_DWORDS,
    RNG_REGISTERS,
    STATUS_INTERRUPT,
)
from models.contract.transaction import (
    Completion,
    HostPort,
    Kind,
    Request,
    Status,
    StreamCompletions,
    stream_lane,
    stream_requests,
)
from models.glibc_rand import GlibcRand
from models.host_memory import MSI_WINDOW

__all__ = ["ConfigSpace", "Debugcon", "Device", "Dma", "NoHost", "Rng", "dma_requests"]

log = logging.getLogger("cosim.model")

_RNG = {reg.name: reg for reg in RNG_REGISTERS}
_NEXT_DWORDS = frozenset(RNG_NEXT_DWORDS)
# Constant registers are single DWs: offset -> value.
_CONSTANTS = {reg.offset: reg.value for reg in RNG_REGISTERS if reg.value is not None}
_DMA_ADDR, _DMA_LEN, _DMA_CTRL, _DMA_STATUS, _INT_STATUS = (
    _RNG[n].offset for n in ("DMA_ADDR", "DMA_LEN", "DMA_CTRL", "DMA_STATUS", "INT_STATUS"))
# The DWs the DMA engine answers (both DWs of DMA_ADDR, ...).
_DMA_DWORDS = frozenset(dw for n in ("DMA_ADDR", "DMA_LEN", "DMA_CTRL", "DMA_STATUS",
                                     "INT_STATUS") for dw in _RNG[n].dwords)
_PAGE = 0x1000  # the flush read's granule: 4 KiB, PCIe's request boundary (2.2.7)


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
    def msi_enabled(self) -> bool:
        return bool(self._dw[MSI_CAP] & MSI_CONTROL_ENABLE)

    @property
    def msi_message(self) -> tuple[int, int]:
        """The MSI capability's (address, data): where the interrupt message goes."""
        return (self._dw[MSI_CAP + 8] << 32 | self._dw[MSI_CAP + 4],
                self._dw[MSI_CAP + 0xC] & 0xFFFF)

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

    def next(self) -> int:
        """The next number, as a read of RNG returns it (the DMA engine's source)."""
        return self._gen.next()

    def write(self, offset: int, be: int, data: int) -> None:
        if offset == _RNG["SEED"].offset and be == 0xF:
            self._gen.seed(data)
        # partial SEED writes, writes to RNG, RNG64, ID, CAPS and unused offsets are ignored


class NoHost:
    """The host of a device nobody attached a `HostPort` to: it refuses everything, so a
    transfer ends with ERROR at its first flush read, as on a host with no memory there."""

    def memory_write(self, req: Request) -> None:
        log.debug("no host memory: dropped %s", req)

    def memory_read(self, req: Request) -> Completion:
        return Completion(req.tag, Status.UR, 0)

    def intx(self, asserted: bool) -> None:
        pass


def dma_requests(addr: int, numbers: list[int], length: int) -> list[Request]:
    """The memory writes of a transfer of `length` bytes to `addr` whose numbers are
    `numbers` (one per started DW), each followed, where it is the last DW written on its
    4 KiB page, by the flush read of that DW: the exact request order (docs/dma.md).
    Device requests carry tag 0: one read is outstanding at a time."""
    reqs = []
    ndw = -(-length // 4)
    for i in range(ndw):
        left = length - 4 * i
        dw = addr + 4 * i
        reqs.append(Request(Kind.MEM_WRITE, dw, 0xF if left >= 4 else (1 << left) - 1,
                            numbers[i]))
        if i == ndw - 1 or (dw + 4) % _PAGE == 0:
            reqs.append(Request(Kind.MEM_READ, dw, 0xF))
    return reqs


class Dma:
    """The DMA engine and the interrupt (semantics in `RNG_REGISTERS`: DMA_*, INT_STATUS;
    docs/dma.md).  A transfer runs to its end inside the START write."""

    def __init__(self, rng: Rng, config: ConfigSpace, host: HostPort) -> None:
        self._rng = rng
        self._config = config
        self.host = host
        self._intx = False
        self.reset()

    def reset(self) -> None:
        self.addr = 0
        self.length = 0
        self.ctrl = 0
        self.status = 0
        self.int_status = 0
        self.update_interrupt()

    def read(self, offset: int) -> int:
        if offset == _DMA_ADDR:
            return self.addr & 0xFFFF_FFFF
        if offset == _DMA_ADDR + 4:
            return self.addr >> 32
        return {_DMA_LEN: self.length, _DMA_CTRL: self.ctrl, _DMA_STATUS: self.status,
                _INT_STATUS: self.int_status}.get(offset, 0)

    def write(self, offset: int, be: int, data: int) -> None:
        mask = _be_mask(be)
        if offset in (_DMA_ADDR, _DMA_ADDR + 4):
            shift = 32 if offset != _DMA_ADDR else 0
            mask &= _RNG["DMA_ADDR"].writable >> shift & 0xFFFF_FFFF
            self.addr = (self.addr & ~(mask << shift)) | (data & mask) << shift
        elif offset == _DMA_LEN:
            self.length = (self.length & ~mask) | (data & mask)
        elif offset == _DMA_CTRL:
            keep = mask & _RNG["DMA_CTRL"].writable
            self.ctrl = (self.ctrl & ~keep) | (data & keep)
            if data & mask & DMA_CTRL_START:
                self._transfer()
        elif offset == _INT_STATUS:
            self.int_status &= ~(data & mask & _RNG["INT_STATUS"].writable)
            self.update_interrupt()

    def _transfer(self) -> None:
        addr, length = self.addr, self.length
        self.status = 0
        ok = (length <= DMA_MAX_LEN and addr + length <= 1 << 64
              and bool(self._config.command & COMMAND_MASTER))
        if ok and length:
            numbers = [self._rng.next() for _ in range(-(-length // 4))]
            page: list[Request] = []
            for req in dma_requests(addr, numbers, length):
                if req.kind is Kind.MEM_WRITE:
                    page.append(req)
                    continue
                self._write_page(page)
                page = []
                if self.host.memory_read(req).status != Status.SC:
                    log.debug("DMA: host refused the page of %#x: ERROR", req.addr)
                    ok = False
                    break
            self._write_page(page)
        self.status = DMA_STATUS_DONE if ok else DMA_STATUS_ERROR
        if self.ctrl & DMA_CTRL_IRQ_EN:
            self._raise()

    def _write_page(self, reqs: list[Request]) -> None:
        """One page's memory writes, in order.  Where the host takes blocks
        (`memory_write_block`: the bridge's guest RAM, its transaction log), the run of
        whole DWs goes over as one, outside the MSI window: the same writes, without a
        host call per DW (which was most of the model's DMA time)."""
        block = getattr(self.host, "memory_write_block", None)
        full = 0
        while full < len(reqs) and reqs[full].be == 0xF:
            full += 1
        if block is not None and full > 1:
            start, size = reqs[0].addr, 4 * full
            contiguous = all(r.addr == start + 4 * i for i, r in enumerate(reqs[:full]))
            if contiguous and not (start < MSI_WINDOW.stop and MSI_WINDOW.start < start + size):
                block(start, b"".join(r.data.to_bytes(4, "little") for r in reqs[:full]))
                reqs = reqs[full:]
        for req in reqs:
            self.host.memory_write(req)

    def _raise(self) -> None:
        was = self.int_status
        self.int_status |= INT_STATUS_DMA
        if not was and self._config.msi_enabled and self._config.command & COMMAND_MASTER:
            addr, data = self._config.msi_message
            self.host.memory_write(Request(Kind.MEM_WRITE, addr, 0xF, data))
        self.update_interrupt()

    @property
    def intx_pending(self) -> bool:
        """The INTx condition (STATUS.Interrupt Status): pending and MSI not in use."""
        return bool(self.int_status) and not self._config.msi_enabled

    def update_interrupt(self) -> None:
        """Drive the INTx wire from the condition and COMMAND.INTX_DISABLE (on change)."""
        level = self.intx_pending and not self._config.command & COMMAND_INTX_DISABLE
        if level != self._intx:
            self._intx = level
            self.host.intx(level)


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
    """The golden model of `rtl.top.Top`, usable as an `Endpoint`; its bus-master
    requests and interrupt go to `host` (default: a host with no memory)."""

    def __init__(self, console_sink: Callable[[bytes], None] | None = None,
                 host: HostPort | None = None) -> None:
        self.config = ConfigSpace()
        self.rng = Rng()
        self.dma = Dma(self.rng, self.config, host or NoHost())
        self.debugcon = Debugcon(console_sink)

    @property
    def host(self) -> HostPort:
        return self.dma.host

    @host.setter
    def host(self, host: HostPort) -> None:
        self.dma.host = host

    def handle(self, req: Request) -> Completion | None:
        kind = req.kind
        data: int | None = None  # None: unclaimed
        # Memory reads first: they are what a guest does most (every RNG read).
        if kind is Kind.MEM_READ:
            if self.config.claims_memory(req.addr):
                offset = req.addr % BAR0_SIZE
                data = (self.dma.read(offset) if offset in _DMA_DWORDS
                        else self.rng.read(offset))
        elif kind is Kind.MEM_WRITE:
            if self.config.claims_memory(req.addr):
                offset = req.addr % BAR0_SIZE
                if offset in _DMA_DWORDS:
                    self.dma.write(offset, req.be, req.data)
                else:
                    self.rng.write(offset, req.be, req.data)
            else:
                log.debug("dropped unclaimed posted %s", req)
            return None  # posted (PCIe 2.4.1): no completion, claimed or not
        elif kind is Kind.CFG_READ:
            data = self.config.read(req.addr)
            if req.addr == 0x04 and self.dma.intx_pending:
                data |= STATUS_INTERRUPT
        elif kind is Kind.CFG_WRITE:
            self.config.write(req.addr, req.be, req.data)
            self.dma.update_interrupt()  # INTX_DISABLE or MSI Enable may have changed
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
        self.dma.reset()
