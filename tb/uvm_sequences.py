"""pyuvm sequences.  Each speaks through `Host(SequenceEndpoint(self))`: byte-addressed
accesses of any size, split into DW requests exactly as the bridge splits QEMU's.

Sequences record what they read (`self.results`) so tests can compare with independent
oracles (glibc via ctypes, the register map); the scoreboard compares every completion
with the model regardless.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pyuvm import uvm_sequence

from models.contract.regmap import (
    BAR0_SIZE,
    BAR0_TEST_BASE,
    COMMAND_IO,
    COMMAND_MEMORY,
    CONFIG_DWORDS,
    DEBUGCON_PORT,
    RNG_REGISTERS,
)
from models.contract.transaction import Host, Kind, Request, Space
from tb.coverage import BE_PATTERNS
from tb.reset_check import check_reset_state
from tb.uvm_item import ReqItem, SequenceEndpoint

__all__ = [
    "BAR0_BASE",
    "AccessMatrixSeq",
    "ConfigSweepSeq",
    "DebugconSeq",
    "EnableSeq",
    "EnumerationSeq",
    "HostSeq",
    "RaceResult",
    "RandomSeq",
    "ResetReadbackSeq",
    "Rng64Seq",
    "RngSeq",
    "SeedRaceSeq",
    "UnsupportedSeq",
]

BAR0_BASE = BAR0_TEST_BASE
_REG = {r.name: r.offset for r in RNG_REGISTERS}
_RNG64 = next(r for r in RNG_REGISTERS if r.name == "RNG64")
_UNUSED_OFFSETS = (0x18, 0x1C, 0x7F8, BAR0_SIZE - 4)


class HostSeq(uvm_sequence):
    """Base: `self.host` (byte-addressed API) and `self.ep` (items, pipelining, reset)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ep = SequenceEndpoint(self)
        self.host = Host(self.ep)
        self.results: list[tuple[str, int]] = []

    async def rng_read(self) -> int:
        return await self.host.mem_read(BAR0_BASE + _REG["RNG"])

    async def seed(self, value: int) -> None:
        await self.host.mem_write(BAR0_BASE + _REG["SEED"], value)


class ResetReadbackSeq(HostSeq):
    """The reset read-back (`tb.reset_check`) for a reset not issued through a sequence:
    the one `RtlEndpoint.start()` applies (resets issued by sequences read back in
    `SequenceEndpoint.reset`)."""

    async def body(self) -> None:
        await check_reset_state(self.host, "after the reset of start()")


class EnableSeq(HostSeq):
    """What a driver's probe does: place BAR0, enable memory (and I/O) decoding."""

    async def body(self) -> None:
        await self.host.cfg_write(0x10, BAR0_BASE)
        await self.host.cfg_write(0x04, COMMAND_MEMORY | COMMAND_IO, 2)


class EnumerationSeq(HostSeq):
    """Config reads and writes in the order QEMU's proxy and Linux issue them.

    QEMU (docs/measured-facts.md): vendor, device, class, subsystem as 2-byte reads; BARs 0..5 and
    0x28 sized by read / write all-ones / read / restore.  Linux then reads header type
    and revision (1 byte), interrupt pin, writes the interrupt line and COMMAND.
    """

    async def body(self) -> None:
        h = self.host
        for name, off, size in (("vendor", 0x00, 2), ("device", 0x02, 2),
                                ("class", 0x0A, 2), ("subsystem", 0x2E, 2),
                                ("subsystem_vendor", 0x2C, 2), ("header_type", 0x0E, 1),
                                ("revision", 0x08, 1), ("prog_if", 0x09, 1),
                                ("interrupt_pin", 0x3D, 1), ("status", 0x06, 2)):
            self.results.append((name, await h.cfg_read(off, size)))
        for off in (0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x28):
            old = await h.cfg_read(off)
            self.results.append((f"old@{off:#x}", old))
            await h.cfg_write(off, 0xFFFF_FFFF)
            self.results.append((f"size@{off:#x}", await h.cfg_read(off)))
            await h.cfg_write(off, old)
            self.results.append((f"restored@{off:#x}", await h.cfg_read(off)))
        await h.cfg_write(0x3C, 0x0B, 1)
        self.results.append(("interrupt_line", await h.cfg_read(0x3C, 1)))
        await h.cfg_write(0x10, BAR0_BASE)
        self.results.append(("bar0", await h.cfg_read(0x10)))
        await h.cfg_write(0x04, 0xFFFF, 2)  # every bit: only the writable ones stick
        self.results.append(("command_all", await h.cfg_read(0x04, 2)))
        await h.cfg_write(0x04, COMMAND_MEMORY | COMMAND_IO, 2)
        self.results.append(("command", await h.cfg_read(0x04, 2)))


class ConfigSweepSeq(HostSeq):
    """Every config DW (implemented or not, up to 0x100 and beyond), every size and
    byte-enable pattern, reads and random writes; leaves the device enabled."""

    def __init__(self, name: str, rng: random.Random) -> None:
        super().__init__(name)
        self.rng = rng

    async def body(self) -> None:
        h = self.host
        offsets = sorted(set(CONFIG_DWORDS) | {0x30, 0x34, 0xFC, 0x100, 0x1000})
        for dw in offsets:
            for size in (1, 2, 4):
                for lane in range(0, 4, size):
                    await h.cfg_read(dw + lane, size)
                    await h.cfg_write(dw + lane, self.rng.getrandbits(8 * size), size)
            await h.cfg_read(dw + 3, 2)  # straddles into the next DW
        await EnableSeq("enable").start(self.sequencer)


class RngSeq(HostSeq):
    """Optionally seed, then read `count` numbers (`self.values`)."""

    def __init__(self, name: str, seed: int | None, count: int) -> None:
        super().__init__(name)
        self.seed_value = seed
        self.count = count
        self.values: list[int] = []

    async def body(self) -> None:
        if self.seed_value is not None:
            await self.seed(self.seed_value)
        for _ in range(self.count):
            self.values.append(await self.rng_read())


class Rng64Seq(HostSeq):
    """RNG64 as a driver uses it: optionally seed, read CAPS, then `count` 8-byte reads
    (`self.values`), then one DW read of the high DW alone, of the low DW alone, and one
    of RNG (`self.singles`): all of them one sequence of numbers."""

    def __init__(self, name: str, seed: int | None, count: int) -> None:
        super().__init__(name)
        self.seed_value = seed
        self.count = count
        self.caps: int | None = None
        self.values: list[int] = []
        self.singles: list[int] = []

    async def body(self) -> None:
        h = self.host
        if self.seed_value is not None:
            await self.seed(self.seed_value)
        self.caps = await h.mem_read(BAR0_BASE + _REG["CAPS"])
        for _ in range(self.count):
            self.values.append(await h.mem_read(BAR0_BASE + _RNG64.offset, _RNG64.size))
        for off in (_RNG64.offset + 4, _RNG64.offset, _REG["RNG"]):
            self.singles.append(await h.mem_read(BAR0_BASE + off))


@dataclass
class RaceResult:
    seed: int
    first: int  # the number the racing read returned
    latency: int  # cycles from its acceptance to its completion
    following: list[int]


class SeedRaceSeq(HostSeq):
    """A SEED write followed at once by a RNG read (issued without waiting), then reads."""

    def __init__(self, name: str, seed: int, count: int) -> None:
        super().__init__(name)
        self.seed_value = seed
        self.count = count
        self.result: RaceResult | None = None

    async def body(self) -> None:
        await self.seed(self.seed_value)
        item = await self.ep.send(ReqItem("race", Request(Kind.MEM_READ, BAR0_BASE + _REG["RNG"])))
        if item.completion is None or item.latency is None:
            raise AssertionError(f"racing read got no completion ({item})")
        following = [await self.rng_read() for _ in range(self.count)]
        self.result = RaceResult(self.seed_value, item.completion.data, item.latency,
                                 following)


class AccessMatrixSeq(HostSeq):
    """Every access size at every alignment, read and write, on every BAR0 register and on
    unused offsets.  Writes to SEED use random values (full-DW ones really seed)."""

    def __init__(self, name: str, rng: random.Random) -> None:
        super().__init__(name)
        self.rng = rng

    async def body(self) -> None:
        h = self.host
        offsets = [dw for r in RNG_REGISTERS for dw in r.dwords] + list(_UNUSED_OFFSETS)
        for off in offsets:
            for size in (1, 2, 4, 8):
                for align in range(4):
                    addr = BAR0_BASE + off + align
                    if addr + size > BAR0_BASE + BAR0_SIZE:
                        continue
                    self.results.append((f"{addr:#x}/{size}", await h.mem_read(addr, size)))
                    await h.mem_write(addr, self.rng.getrandbits(8 * size), size)
                    # A read right behind the write: catches a write that disturbed state.
                    await h.mem_read(BAR0_BASE + _REG["ID"], 4)
        # Byte-enable patterns only reachable from a neighbouring DW (e.g. 0b0111 on RNG
        # needs an access starting below BAR0), driven as raw requests.
        for dw in (dw for reg in RNG_REGISTERS for dw in reg.dwords):
            for be in BE_PATTERNS:
                addr = BAR0_BASE + dw
                await self.ep.send(ReqItem("be", Request(Kind.MEM_READ, addr, be)))
                await self.ep.send(ReqItem("be", Request(Kind.MEM_WRITE, addr, be,
                                                         self.rng.getrandbits(32))))


class UnsupportedSeq(HostSeq):
    """Requests no function claims: each must complete UR (reads all-ones at the host),
    posted ones must vanish; the device must stay healthy afterwards."""

    async def body(self) -> None:
        h = self.host
        r = self.results
        for addr in (BAR0_BASE + BAR0_SIZE, BAR0_BASE - 4, 0, 1 << 32 | BAR0_BASE,
                     0xFFFF_FFFF_FFFF_F000):
            r.append((f"mem@{addr:#x}/4", await h.mem_read(addr)))
            await h.mem_write(addr, 0x1234_5678)
        for port in (0x80, 0xE4, 0xEC, 0x3F8, 0xCF8):
            r.append((f"io@{port:#x}/4", await h.io_read(port, 4)))
            await h.io_write(port, 0x5A, 1)
        for port in (0xE8, 0xEA, 0xEB):  # the DW of 0xe9 but not its lane
            r.append((f"io@{port:#x}/1", await h.io_read(port, 1)))
            await h.io_write(port, 0xA5, 1)
        # Memory decoding off: BAR0 no longer answers, writes are dropped.
        await h.cfg_write(0x04, COMMAND_IO, 2)
        r.append(("rng_mem_off/4", await self.rng_read()))
        await self.seed(0x1234)  # must not seed
        r.append(("id_mem_off/4", await h.mem_read(BAR0_BASE + _REG["ID"])))
        await h.cfg_write(0x04, COMMAND_MEMORY | COMMAND_IO, 2)
        r.append(("id_mem_on/4", await h.mem_read(BAR0_BASE + _REG["ID"])))


class DebugconSeq(HostSeq):
    """Bytes to port 0xe9, one I/O write each, with occasional detection reads."""

    def __init__(self, name: str, data: bytes, read_every: int = 0) -> None:
        super().__init__(name)
        self.data = data
        self.read_every = read_every

    async def body(self) -> None:
        for i, byte in enumerate(self.data):
            await self.host.io_write(DEBUGCON_PORT, byte, 1)
            if self.read_every and i % self.read_every == 0:
                self.results.append(("detect", await self.host.io_read(DEBUGCON_PORT, 1)))


class RandomSeq(HostSeq):
    """Constrained-random mix of everything software can do to the device.

    Weights favour the RNG (RNG and RNG64) and debugcon; rarer: COMMAND toggling,
    unclaimed requests, re-seeds with reads racing them, config writes.  Keeps the device
    enabled.
    """

    def __init__(self, name: str, rng: random.Random, count: int) -> None:
        super().__init__(name)
        self.rng = rng
        self.count = count

    def _seed_value(self) -> int:
        return self.rng.choice([0, 1, 0x7FFF_FFFF, 0x8000_0000 | self.rng.getrandbits(31),
                                self.rng.getrandbits(31), 0xFFFF_FFFF])

    async def body(self) -> None:
        h = self.host
        rnd = self.rng
        ops = {
            "rng": 30, "rng64": 12, "seed": 6, "race": 3, "race64": 2, "bar_any": 15,
            "debugcon": 20, "detect": 3, "cfg_read": 8, "cfg_write": 3, "mem_off": 2,
            "unclaimed": 5,
        }
        names, weights = list(ops), list(ops.values())
        for _ in range(self.count):
            op = rnd.choices(names, weights)[0]
            if op == "rng":
                await h.mem_read(BAR0_BASE + _REG["RNG"] + rnd.randrange(4),
                                 rnd.choice((1, 2, 4)))
            elif op == "rng64":
                # Mostly 8-byte reads (the driver's), sometimes one DW alone.
                off = rnd.choice((0, 0, 0, 4))
                size = 8 if off == 0 and rnd.random() < 0.7 else rnd.choice((1, 2, 4))
                await h.mem_read(BAR0_BASE + _RNG64.offset + off, size)
            elif op == "seed":
                await self.seed(self._seed_value())
            elif op == "race":
                await self.seed(self._seed_value())
                await self.rng_read()
            elif op == "race64":
                await self.seed(self._seed_value())
                await h.mem_read(BAR0_BASE + _RNG64.offset, _RNG64.size)
            elif op == "bar_any":
                size = rnd.choice((1, 2, 4, 8))
                addr = BAR0_BASE + rnd.choice([0, 4, 8, 0xC, 0x10, 0x14, 0x18, BAR0_SIZE - 8]) \
                    + rnd.randrange(4)
                if rnd.random() < 0.5:
                    await h.mem_read(addr, size)
                else:
                    await h.mem_write(addr, rnd.getrandbits(8 * size), size)
            elif op == "debugcon":
                for byte in rnd.randbytes(rnd.randrange(1, 24)):
                    await h.io_write(DEBUGCON_PORT, byte, 1)
            elif op == "detect":
                await h.io_read(DEBUGCON_PORT, 1)
            elif op == "cfg_read":
                size = rnd.choice((1, 2, 4))
                await h.cfg_read(rnd.randrange(0, 0x40, size), size)
            elif op == "cfg_write":
                # Only registers whose change does not disable the device.
                await h.cfg_write(0x3C, rnd.getrandbits(8), 1)
            elif op == "mem_off":
                await h.cfg_write(0x04, COMMAND_IO, 2)
                await h.mem_read(BAR0_BASE + _REG["ID"])
                await self.seed(rnd.getrandbits(32))  # dropped: must not seed
                await h.cfg_write(0x04, COMMAND_MEMORY | COMMAND_IO, 2)
            elif op == "unclaimed":
                space = rnd.choice((Space.MEM, Space.IO))
                addr = (rnd.choice((BAR0_BASE + BAR0_SIZE, 1 << 33)) if space is Space.MEM
                        else rnd.choice((0x80, 0xE8, 0xEC)))
                if rnd.random() < 0.5:
                    await h.read(space, addr, 1)
                else:
                    await h.write(space, addr, rnd.getrandbits(8), 1)
