"""Address-decode sweeps: every address bit of every space, around all the device claims.

A decoder that ignores an address bit answers at an alias: a read returns a register
where the map says unsupported (UR) or 0, a write changes a register from another
address.  The probes are derived from the interface and the register map, none is listed
by hand: for each claimed byte address C of a space (`tb.coverage.claimed_bytes`: each
register DW of BAR0, the debugcon port, each implemented config DW) and each bit N of the
space's addresses (`tb.coverage.ADDR_BITS`: 64 memory, 16 I/O, 12 config), an access at C
with bit N inverted; each byte lane of C's DW alone; and the walking-one (only N set) and
walking-zero (all but N set) addresses.  Bits 0-1 of a byte address are byte lanes
(docs/transactions.md), so a probe whose address has them set is a 1-byte access, any
other a whole DW; no probe straddles a DW.

Every probe is a request through the sequencer, so the scoreboard checks it against the
model (status, data, console bytes).  Independently of the model, each sweep also works
out from the register map alone what each probe must complete as (SC or UR) and what a
read returns (numbers from glibc through ctypes), and records `(what, got, want)` in
`checks` for the test to compare.  A write through an alias leaves no trace in its own
completion, so after the writes the sweeps read back what a write can change: the config
header (COMMAND, BAR0, INTERRUPT are writable), and the generator (a SEED written through
an alias re-seeds it: the next number is no longer glibc's).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator

from models.contract.regmap import (
    BAR0_SIZE,
    BAR0_TEST_BASE,
    COMMAND_IO,
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
    RNG_REGISTERS,
    STATUS_INTERRUPT,
    rng_register_at,
)
from models.contract.transaction import Kind, Request, Space, Status, split_access
from models.glibc_oracle import glibc_sequence
from tb.coverage import ADDR_BITS, claimed_bytes
from tb.uvm_sequences import HostSeq

__all__ = [
    "ConfigDecodeSweepSeq",
    "DecodeSweepSeq",
    "IoDecodeSweepSeq",
    "MemDecodeSweepSeq",
    "Probe",
    "around",
    "walking",
]

log = logging.getLogger("cosim.tb.decode_sweep")
# One line per sweep in sim.log (cocotb leaves the root logger at WARNING): how many probes
# each made, so a run shows the sweeps really ran.
log.setLevel(logging.INFO)

Probe = tuple[str, int, int]  # (why, byte address, size in bytes)

_READ = {Space.MEM: Kind.MEM_READ, Space.CFG: Kind.CFG_READ, Space.IO: Kind.IO_READ}
_WRITE = {Space.MEM: Kind.MEM_WRITE, Space.CFG: Kind.CFG_WRITE, Space.IO: Kind.IO_WRITE}
_CFG = {cd.name: off for off, cd in CONFIG_DWORDS.items()}
_WRITABLE_CFG = tuple(off for off, cd in CONFIG_DWORDS.items() if cd.writable)
_REG = {r.name: r.offset for r in RNG_REGISTERS}
_DMA_NAMES = frozenset(("DMA_ADDR", "DMA_LEN", "DMA_CTRL", "DMA_STATUS", "INT_STATUS"))


def _ones(size: int) -> int:
    return (1 << (8 * size)) - 1


def _size(addr: int) -> int:
    """A probe at a DW address reads the whole DW; one at another byte, that byte."""
    return 1 if addr & 3 else 4


def around(claimed: int, width: int) -> list[Probe]:
    """Each byte lane of `claimed`'s DW alone, then `claimed` with each of its `width`
    address bits inverted (bits 0-1 give other lanes of the same DW: not repeated)."""
    dw = claimed & ~3
    probes = [(f"lane{i}", dw + i, 1) for i in range(4)]
    seen = {addr for _, addr, _ in probes}
    for n in range(width):
        addr = claimed ^ (1 << n)
        if addr not in seen:
            seen.add(addr)
            probes.append((f"b{n}", addr, _size(addr)))
    return probes


def walking(width: int) -> Iterator[Probe]:
    """Walking one and walking zero over `width` address bits: every power of two, and
    every all-ones-but-one address as its byte (a 1-byte access: its low bits are set) and,
    from bit 2 on, as its whole DW."""
    top = (1 << width) - 1
    for n in range(width):
        one, zero = 1 << n, top ^ (1 << n)
        yield f"walk1 b{n}", one, _size(one)
        yield f"walk0 b{n}", zero, 1
        if n >= 2:
            yield f"walk0 b{n} DW", zero & ~3, 4


class _ConfigShadow:
    """Config space as the register map alone says it is after the writes made to it: a
    write changes the writable bits of its enabled lanes of a listed DW, nothing else."""

    def __init__(self) -> None:
        self.dw = {off: cd.reset for off, cd in CONFIG_DWORDS.items()}

    def write(self, dw: int, be: int, data: int) -> None:
        cd = CONFIG_DWORDS.get(dw)
        if cd is not None:
            mask = cd.writable & sum(0xFF << (8 * i) for i in range(4) if be >> i & 1)
            self.dw[dw] = (self.dw[dw] & ~mask) | (data & mask)

    def read(self, dw: int) -> int:
        return self.dw.get(dw, 0)  # unlisted DWs, and everything from 0x100 on, read 0

    @property
    def command(self) -> int:
        return self.dw[_CFG["COMMAND_STATUS"]] & 0xFFFF

    @property
    def bar0(self) -> int:
        return self.dw[_CFG["BAR0"]] & ~(BAR0_SIZE - 1)

    @property
    def msi_enabled(self) -> bool:
        return bool(self.dw[MSI_CAP] & MSI_CONTROL_ENABLE)


class _DmaShadow:
    """The DMA registers as the register map says they are, on a host with no memory (the
    testbench's default `HostMemoryAgent`): a transfer that is not refused at once takes
    the numbers of its first page's DWs and ends with ERROR at that page's flush read."""

    def __init__(self) -> None:
        self.addr = self.length = self.irq_en = self.status = self.int_status = 0

    def write(self, off: int, be: int, data: int, master: bool) -> int:
        """Apply a write; the count of numbers a transfer it started took."""
        lanes = sum(0xFF << (8 * i) for i in range(4) if be >> i & 1)
        if off in (_REG["DMA_ADDR"], _REG["DMA_ADDR"] + 4):
            shift = 0 if off == _REG["DMA_ADDR"] else 32
            mask = lanes & (0xFFFF_FFFC if shift == 0 else 0xFFFF_FFFF)
            self.addr = (self.addr & ~(mask << shift)) | (data & mask) << shift
        elif off == _REG["DMA_LEN"]:
            self.length = (self.length & ~lanes) | (data & lanes)
        elif off == _REG["DMA_CTRL"] and be & 1:
            self.irq_en = int(bool(data & DMA_CTRL_IRQ_EN))
            if data & DMA_CTRL_START:
                return self._transfer(master)
        elif off == _REG["INT_STATUS"] and be & 1 and data & INT_STATUS_DMA:
            self.int_status = 0
        return 0

    def _transfer(self, master: bool) -> int:
        taken = 0
        if self.length > DMA_MAX_LEN or self.addr + self.length > 1 << 64 or not master:
            self.status = DMA_STATUS_ERROR
        elif self.length == 0:
            self.status = DMA_STATUS_DONE
        else:
            taken = min(-(-self.length // 4), (0x1000 - (self.addr & 0xFFF)) // 4)
            self.status = DMA_STATUS_ERROR
        if self.irq_en:
            self.int_status = INT_STATUS_DMA
        return taken

    def read(self, off: int) -> int:
        return {_REG["DMA_ADDR"]: self.addr & 0xFFFF_FFFF, _REG["DMA_ADDR"] + 4: self.addr >> 32,
                _REG["DMA_LEN"]: self.length, _REG["DMA_CTRL"]: self.irq_en << 1,
                _REG["DMA_STATUS"]: self.status, _REG["INT_STATUS"]: self.int_status}.get(off, 0)



class DecodeSweepSeq(HostSeq):
    """Base: probes as raw single-DW requests, each checked against the register map.

    `checks`: `(what, got, want)` per completion status, read value, and read-back.
    `console`: the bytes the map says the probes put out on debugcon.
    """

    space: Space = Space.MEM

    def __init__(self, name: str, rng: random.Random) -> None:
        super().__init__(name)
        self.rng = rng
        self.checks: list[tuple[str, object, object]] = []
        self.console = bytearray()
        self.probes = 0
        self._cfg = _ConfigShadow()
        self._dma = _DmaShadow()
        self._seed = 1
        self._numbers: list[int] = []
        self._taken = 0  # numbers read since the last SEED write

    # -- the register map's answer -------------------------------------------------------

    def _next_number(self) -> int:
        if self._taken >= len(self._numbers):  # glibc again from srand, twice as far
            self._numbers = glibc_sequence(self._seed, max(64, 2 * len(self._numbers)))
        self._taken += 1
        return self._numbers[self._taken - 1]

    def _expect(self, space: Space, dw: int, be: int, data: int | None) -> int | None:
        """What the map says a request completes with: None for UR, else its read data
        (0 for a write).  Applies the request's effect to the map's state."""
        if space is Space.CFG:  # every offset is ours (docs/registers.md)
            if data is not None:
                self._cfg.write(dw, be, data)
                return 0
            value = self._cfg.read(dw)
            if dw == _CFG["COMMAND_STATUS"] and self._dma.int_status and not self._cfg.msi_enabled:
                value |= STATUS_INTERRUPT  # the INTx condition (live bit)
            return value
        if space is Space.IO:
            if dw != DEBUGCON_PORT & ~3 or not be >> (DEBUGCON_PORT & 3) & 1:
                return None
            if data is not None:
                self.console.append(data >> (8 * (DEBUGCON_PORT & 3)) & 0xFF)
                return 0
            return DEBUGCON_READ_VALUE << (8 * (DEBUGCON_PORT & 3))
        # Memory: BAR0 answers while COMMAND.MEM is set (PCI 3.0 6.2.2, 6.2.5.1).
        if not self._cfg.command & COMMAND_MEMORY or dw & ~(BAR0_SIZE - 1) != self._cfg.bar0:
            return None
        off = dw % BAR0_SIZE
        reg = rng_register_at(off)
        dma = reg is not None and reg.name in _DMA_NAMES
        if data is not None:
            if reg is not None and reg.name == "SEED" and be == 0xF:
                self._seed, self._numbers, self._taken = data, [], 0
            elif dma:
                for _ in range(self._dma.write(off, be, data, bool(self._cfg.command
                                                                   & COMMAND_MASTER))):
                    self._next_number()  # the transfer took them
            return 0
        if dma:
            return self._dma.read(off)
        if reg is None or (reg.value is None and not reg.next_number):
            return 0  # unused offsets and SEED read 0
        # Any read of a number's DW takes the next one, whatever its lanes.
        return self._next_number() if reg.next_number else reg.value

    # -- probes --------------------------------------------------------------------------

    async def probe(self, what: str, space: Space, addr: int, size: int,
                    value: int | None = None) -> None:
        """One read (`value` None) or write of `size` bytes at byte address `addr`, checked
        against the map: completion status, and the read bytes."""
        [(dw, be, _)] = split_access(addr, size)  # probes never straddle a DW
        lane = addr & 3
        data = None if value is None else value << (8 * lane)
        kind = _READ[space] if data is None else _WRITE[space]
        want = self._expect(space, dw, be, data)
        cpl = await self.ep.transact(Request(kind, dw, be, data or 0))
        self.probes += 1
        label = f"{kind.name} {addr:#x}/{size} ({what})"
        if kind.posted:
            return  # no completion: its effect shows in the read-backs
        if cpl is None:
            self.checks.append((label, "no completion", "a completion"))
            return
        want_status = Status.UR if want is None else Status.SC
        self.checks.append((f"{label} status", Status(cpl.status).name, want_status.name))
        if want is not None and data is None and cpl.status == Status.SC:
            lanes = _ones(size) << (8 * lane)
            self.checks.append((f"{label} data", cpl.data & lanes, want & lanes))

    async def sweep_reads(self, probes: Iterable[Probe], tag: str = "") -> None:
        for why, addr, size in probes:
            await self.probe(f"{tag} {why}".strip(), self.space, addr, size)

    async def sweep_writes(self, probes: Iterable[Probe], tag: str = "") -> None:
        for why, addr, size in probes:
            await self.probe(f"{tag} {why}".strip(), self.space, addr, size,
                             self.rng.getrandbits(8 * size))

    async def establish(self, bar0: int) -> None:
        """Every writable config bit to a known value (the map's shadow is then the truth):
        BAR0 at `bar0`, memory and I/O decoding on, a random interrupt line."""
        await self.probe("COMMAND", Space.CFG, _CFG["COMMAND_STATUS"], 4,
                         COMMAND_MEMORY | COMMAND_IO)
        await self.probe("BAR0", Space.CFG, _CFG["BAR0"], 4, bar0)
        await self.probe("INTERRUPT line", Space.CFG, _CFG["INTERRUPT"], 1,
                         self.rng.getrandbits(8))
        for off in _WRITABLE_CFG:  # the rest (the MSI capability) off, at 0
            if off not in (_CFG["COMMAND_STATUS"], _CFG["BAR0"], _CFG["INTERRUPT"]):
                await self.probe(f"{CONFIG_DWORDS[off].name} cleared", Space.CFG, off, 4, 0)
        # The DMA engine to a known state: no address, a zero-length transfer without
        # interrupt (its DONE or ERROR follows from COMMAND), its interrupt status cleared.
        for name, value in (("DMA_ADDR", 0), ("DMA_LEN", 0), ("DMA_CTRL", DMA_CTRL_START),
                            ("INT_STATUS", INT_STATUS_DMA)):
            await self.probe(f"{name} known", Space.MEM, bar0 + _REG[name], 4, value)
        await self.probe("DMA_ADDR high known", Space.MEM, bar0 + _REG["DMA_ADDR"] + 4, 4, 0)

    async def reseed(self) -> None:
        await self.probe("SEED", Space.MEM, self._cfg.bar0 + _REG["SEED"], 4,
                         self.rng.getrandbits(32))

    async def read_back(self, after: str) -> None:
        """What writes through an alias could have changed: the header, and the
        generator (the next number must be glibc's, from the last real SEED write)."""
        for off, cd in CONFIG_DWORDS.items():
            await self.probe(f"{cd.name} read back after {after}", Space.CFG, off, 4)
        if self._cfg.command & COMMAND_MEMORY:
            await self.probe(f"RNG after {after}", Space.MEM, self._cfg.bar0 + _REG["RNG"], 4)


class MemDecodeSweepSeq(DecodeSweepSeq):
    """Memory decode at two BAR0 bases, the test base and its complement (so that each BAR
    address bit is seen both 0 and 1 in a claimed address): reads around every register
    DW, then the same addresses written, one group per address bit with a RNG read after
    each (a SEED written through an alias shows at once); walking ones and zeros over the
    64 address bits.  Leaves BAR0 at the test base, memory decoding on."""

    space = Space.MEM

    async def body(self) -> None:
        width = ADDR_BITS[Space.MEM]
        bases = (BAR0_TEST_BASE, ~BAR0_TEST_BASE & CONFIG_DWORDS[_CFG["BAR0"]].writable)
        for base in bases:
            await self.establish(base)
            await self.reseed()
            claimed = claimed_bytes(Space.MEM, base)
            for c, name in claimed.items():
                await self.sweep_reads(around(c, width), name)
            groups: dict[str, list[Probe]] = {}
            for c, name in claimed.items():
                for why, addr, size in around(c, width):
                    groups.setdefault(why, []).append((f"{name} {why}", addr, size))
            for why, probes in groups.items():
                await self.sweep_writes(probes)
                await self.probe(f"RNG after the {why} writes", Space.MEM, base + _REG["RNG"], 4)
            await self.read_back(f"the writes around BAR0 {base:#x}")
        await self.establish(BAR0_TEST_BASE)
        await self.sweep_reads(walking(width))
        await self.sweep_writes(walking(width))
        await self.read_back("the walking writes")
        log.info("memory decode sweep: %d probes", self.probes)


class IoDecodeSweepSeq(DecodeSweepSeq):
    """I/O decode over the 16-bit port space, sampled by bit: around the debugcon port
    (each lane of its DW, each port bit inverted) and walking ones and zeros (every power
    of two), read and written; then the detection read, the header and the generator."""

    space = Space.IO

    async def body(self) -> None:
        width = ADDR_BITS[Space.IO]
        await self.establish(BAR0_TEST_BASE)
        await self.reseed()
        probes = [p for c in claimed_bytes(Space.IO) for p in around(c, width)]
        probes += walking(width)
        await self.sweep_reads(probes)
        await self.sweep_writes(probes)
        await self.probe("debugcon detection", Space.IO, DEBUGCON_PORT, 1)
        await self.read_back("the I/O writes")
        log.info("I/O decode sweep: %d probes", self.probes)


class ConfigDecodeSweepSeq(DecodeSweepSeq):
    """Config decode over the 4 KiB (12-bit) space.

    Reads around every implemented DW and walking ones and zeros.  Then every DW offset is
    written once: the writable DWs (COMMAND, BAR0, INTERRUPT) are first set to the
    complement of the data then written everywhere else, so a write that reaches one of
    them through an alias changes it for good and the header read back after each 256
    bytes shows it; the writable DWs themselves and every lane of each implemented DW are
    written last, with the writable DWs read back after each write.  Leaves BAR0 at the
    test base, decoding on."""

    space = Space.CFG
    group = 0x100  # bytes of offsets written between header read-backs

    async def body(self) -> None:
        width = ADDR_BITS[Space.CFG]
        await self.establish(BAR0_TEST_BASE)
        await self.reseed()  # config writes must not touch the generator: checked at the end
        claimed = claimed_bytes(Space.CFG)
        for c, name in claimed.items():
            await self.sweep_reads(around(c, width), name)
        await self.sweep_reads(walking(width))
        data = self.rng.getrandbits(32)
        for off in _WRITABLE_CFG:
            await self.probe("complement of the sweep's data", Space.CFG, off, 4,
                             ~data & 0xFFFF_FFFF)
        for start in range(0, 1 << width, self.group):
            for off in range(start, start + self.group, 4):
                if off not in _WRITABLE_CFG:
                    await self.probe("whole-space write", Space.CFG, off, 4, data)
            await self.read_back(f"the writes to {start:#x}..{start + self.group - 1:#x}")
        for c, name in claimed.items():
            for why, addr, size in (*((f"lane{i}", c + i, 1) for i in range(4)), ("DW", c, 4)):
                await self.probe(f"{name} {why}", Space.CFG, addr, size,
                                 self.rng.getrandbits(8 * size))
                for off in _WRITABLE_CFG:
                    await self.probe(f"{CONFIG_DWORDS[off].name} after writing {name} {why}",
                                     Space.CFG, off, 4)
        await self.establish(BAR0_TEST_BASE)
        await self.read_back("the config writes")
        log.info("config decode sweep: %d probes", self.probes)
