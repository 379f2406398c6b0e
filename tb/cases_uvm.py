"""The pyuvm test cases (a cocotb test module: run through `tb.regression` / `tb/test_rtl.py`).

Every test runs its body under each timing profile of `tb.uvm_env.TIMING_PROFILES` (idle
cycles on `req`, back-pressure on `cpl` and `con`); the scoreboard checks every completion
and console byte against `models.device.Device`; each test also checks its results against
an oracle independent of the model: glibc through ctypes for numbers, the register map
(the contract) for config space and registers.
"""

from __future__ import annotations

import itertools

import pyuvm

from models.contract.regmap import (
    BAR0_SIZE,
    CAPS_RNG64,
    COMMAND_IO,
    COMMAND_MEMORY,
    COMMAND_WRITABLE,
    DEBUGCON_PORT,
    DEBUGCON_READ_VALUE,
    IDENTITY,
    RNG_CAPS_VALUE,
    RNG_ID_VALUE,
    RNG_REGISTERS,
    STATUS_CAP_LIST,
)
from models.contract.transaction import Kind, Request
from models.glibc_oracle import glibc_sequence
from tb.console_monitor import ConsoleMonitor
from tb.decode_sweep import (
    ConfigDecodeSweepSeq,
    DecodeSweepSeq,
    IoDecodeSweepSeq,
    MemDecodeSweepSeq,
)
from tb.uvm_env import CosimTest
from tb.uvm_item import ReqItem
from tb.uvm_sequences import (
    BAR0_BASE,
    AccessMatrixSeq,
    ConfigSweepSeq,
    DebugconSeq,
    EnableSeq,
    EnumerationSeq,
    HostSeq,
    RandomSeq,
    Rng64Seq,
    RngSeq,
    SeedRaceSeq,
    UnsupportedSeq,
)

__all__: list[str] = []

# Simulated-time cap per test (each needs under 1 ms): a hang fails instead of running on.
SIM_TIME_LIMIT_MS = 10

_OFFSET = {r.name: r.offset for r in RNG_REGISTERS}
_RNG, _SEED = _OFFSET["RNG"], _OFFSET["SEED"]
_CONSTANTS = {r.name: (r.offset, r.value) for r in RNG_REGISTERS if r.value is not None}
_MAP_END = max(r.offset + r.size for r in RNG_REGISTERS)  # every offset from here is unused


class Mismatches:
    """Collects differences so one run reports all of them, then fails once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def expect(self, what: str, got: object, want: object) -> None:
        if got != want:
            fmt = (lambda v: f"{v:#x}") if isinstance(got, int) and isinstance(want, int) \
                else repr
            self.items.append(f"{what}: got {fmt(got)}, expected {fmt(want)}")

    def check(self) -> None:
        if self.items:
            raise AssertionError(f"{len(self.items)} mismatches:\n  " + "\n  ".join(
                self.items[:30]))


def _ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class ResetSeq(HostSeq):
    async def body(self) -> None:
        await self.ep.reset()


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class ConfigSpaceEnumeratesAsQemuAndLinuxExpect(CosimTest):
    """Config space as QEMU's proxy and Linux enumerate it, then every DW at every size."""

    required = ("config_dword",)

    async def body(self) -> None:
        seq = await self.run(EnumerationSeq("enumerate"))
        r = dict(seq.results)
        m = Mismatches()
        ident = IDENTITY
        for name, want in (("vendor", ident.vendor), ("device", ident.device),
                           ("class", ident.class_code >> 8), ("prog_if", ident.class_code & 0xFF),
                           ("revision", ident.revision), ("subsystem", ident.subsystem),
                           ("subsystem_vendor", ident.subsystem_vendor), ("header_type", 0),
                           ("interrupt_pin", ident.interrupt_pin),
                           ("status", STATUS_CAP_LIST >> 16),
                           ("interrupt_line", 0x0B), ("bar0", BAR0_BASE),
                           ("command_all", COMMAND_WRITABLE),
                           ("command", COMMAND_MEMORY | COMMAND_IO)):
            m.expect(name, r[name], want)
        for off in (0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x28):
            # Only BAR0 exists: 4 KiB, 32-bit, non-prefetchable memory (low bits 0).
            want = ~(BAR0_SIZE - 1) & 0xFFFF_FFFF if off == 0x10 else 0
            m.expect(f"BAR sizing read at {off:#x}", r[f"size@{off:#x}"], want)
            m.expect(f"BAR restored at {off:#x}", r[f"restored@{off:#x}"], r[f"old@{off:#x}"])
        m.check()
        await self.run(ConfigSweepSeq("sweep", self.rng))


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class RngMatchesGlibcForEverySeedClass(CosimTest):
    """After reset the RNG is srand(1); after SEED s it is srand(s): checked against glibc."""

    required = ("seed_class",)
    seeds = (0, 1, 2, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0xDEAD_BEEF, 12345)
    count = 24

    async def body(self) -> None:
        m = Mismatches()
        await self.run(ResetSeq("reset"))
        await self.enable()
        seq = await self.run(RngSeq("default", None, self.count))
        m.expect("numbers before any SEED write (glibc srand(1))", seq.values,
                 glibc_sequence(1, self.count))
        seeds = [*self.seeds, *(self.rng.getrandbits(32) for _ in range(3))]
        for seed in seeds:
            seq = await self.run(RngSeq(f"seed{seed:#x}", seed, self.count))
            m.expect(f"numbers after SEED {seed:#x}", seq.values,
                     glibc_sequence(seed, self.count))
        m.check()


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class Rng64ReadsAreTheGlibcStreamTwoNumbersAtATime(CosimTest):
    """CAPS advertises RNG64; 8-byte RNG64 reads return rand_n in [31:0] and rand_n+1 in
    [63:32]; DW reads of 0x14 or 0x10 alone and RNG reads continue the same sequence;
    an 8-byte read racing a SEED write completes late and correct.  Checked against glibc."""

    required = ("rng64",)
    count = 12

    async def body(self) -> None:
        m = Mismatches()
        await self.run(ResetSeq("reset"))
        await self.enable()
        seeds = [None, 0, 0x8000_0000, 0xFFFF_FFFF, self.rng.getrandbits(32)]
        for seed in seeds:
            seq = await self.run(Rng64Seq(f"rng64-{seed}", seed, self.count))
            want = glibc_sequence(1 if seed is None else seed, 2 * self.count + 3)
            pairs = [want[i] | want[i + 1] << 32 for i in range(0, 2 * self.count, 2)]
            m.expect(f"CAPS (SEED {seed})", seq.caps, RNG_CAPS_VALUE)
            m.expect(f"CAPS.RNG64 set (SEED {seed})", (seq.caps or 0) & CAPS_RNG64, CAPS_RNG64)
            m.expect(f"8-byte RNG64 reads after SEED {seed}", seq.values, pairs)
            m.expect(f"DW reads of 0x14, 0x10, RNG after them (SEED {seed})", seq.singles,
                     want[2 * self.count:])
        m.check()


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class ReadRacingReseedCompletesLateAndCorrect(CosimTest):
    """Re-seeding mid-stream; a read right behind a SEED write completes late and correct;
    a SEED write during seeding restarts it."""

    required = ("read_during_seeding",)

    async def body(self) -> None:
        m = Mismatches()
        await self.enable()
        # Baseline: how long a read takes when the generator is ready, under this timing.
        seq = await self.run(RngSeq("warm", 0x1111, 2))
        m.expect("warm-up numbers", seq.values, glibc_sequence(0x1111, 2))
        baseline = 0
        for _ in range(4):
            item = ReqItem("plain", Request(Kind.MEM_READ, BAR0_BASE + _RNG))
            await self.run(_ItemSeq("plain", item))
            baseline = max(baseline, item.latency or 0)
        for seed in (7, 0, 0x8000_0001, self.rng.getrandbits(32)):
            race = await self.run(SeedRaceSeq(f"race{seed:#x}", seed, 5))
            assert race.result is not None
            want = glibc_sequence(seed, 6)
            m.expect(f"racing read after SEED {seed:#x}", race.result.first, want[0])
            m.expect(f"reads after the racing one, SEED {seed:#x}", race.result.following,
                     want[1:])
            if race.result.latency <= baseline:
                m.items.append(f"read racing SEED {seed:#x} took {race.result.latency} cycles, "
                               f"no more than a plain read ({baseline}): it did not wait "
                               "for the seeding")
        # Seeding restarted by a second SEED write before the first one finished.
        restart = await self.run(_DoubleSeedSeq("double", 0xAAAA, 0x5555, 5))
        m.expect("numbers after SEED during seeding", restart.values,
                 glibc_sequence(0x5555, 5))
        # Re-seed mid-stream with the same seed: the sequence starts over.
        a = await self.run(RngSeq("again1", 99, 5))
        b = await self.run(RngSeq("again2", 99, 5))
        m.expect("same seed twice", b.values, a.values)
        m.check()


class _ItemSeq(HostSeq):
    def __init__(self, name: str, item: ReqItem) -> None:
        super().__init__(name)
        self.item = item

    async def body(self) -> None:
        await self.ep.send(self.item)


class _DoubleSeedSeq(RngSeq):
    def __init__(self, name: str, first: int, second: int, count: int) -> None:
        super().__init__(name, second, count)
        self.first = first

    async def body(self) -> None:
        await self.seed(self.first)
        await super().body()


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class EveryAccessSizeAndByteEnableBehavesAsMapped(CosimTest):
    """Every access size and byte-enable pattern on every BAR0 register and unused offset."""

    required = ("rng_access", "unused_offset")

    async def body(self) -> None:
        await self.enable()
        seq = await self.run(AccessMatrixSeq("matrix", self.rng))
        m = Mismatches()
        for key, value in seq.results:
            addr_s, size_s = key.split("/")
            addr, size = int(addr_s, 16), int(size_s)
            off = addr - BAR0_BASE
            # Only accesses inside one register have a map-given value (RNG, RNG64: the
            # scoreboard, and RngMatchesGlibc... / Rng64... against glibc).
            if off >= _MAP_END:
                m.expect(f"unused offset read {off:#x}/{size}", value, 0)
            elif _SEED <= off and off + size <= _SEED + 4:
                m.expect(f"SEED read {off:#x}/{size}", value, 0)
            for name, (reg_off, reg_value) in _CONSTANTS.items():
                if reg_off <= off and off + size <= reg_off + 4:
                    shift = 8 * (off - reg_off)
                    m.expect(f"{name} read {off:#x}/{size}", value,
                             (reg_value >> shift) & _ones(size))
        m.check()


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class UnclaimedRequestsCompleteUnsupported(CosimTest):
    """Unclaimed addresses and ports, and BAR0 with COMMAND.MEM clear: UR, all-ones at the
    host, posted writes dropped (the generator is not re-seeded)."""

    required = ("unsupported",)

    async def body(self) -> None:
        await self.enable()
        m = Mismatches()
        seed = self.rng.getrandbits(32)
        before = await self.run(RngSeq("before", seed, 3))
        seq = await self.run(UnsupportedSeq("unsupported"))
        after = await self.run(RngSeq("after", None, 3))
        want = glibc_sequence(seed, 6)
        m.expect("numbers before", before.values, want[:3])
        m.expect("numbers after the dropped SEED write continue the sequence", after.values,
                 want[3:])
        for key, value in seq.results:
            if key == "id_mem_on/4":
                m.expect("ID after re-enabling memory", value, RNG_ID_VALUE)
            else:
                m.expect(f"UR read {key}", value, _ones(int(key.split("/")[1])))
        m.check()


def _expect_checks(m: Mismatches, seq: DecodeSweepSeq) -> None:
    for what, got, want in seq.checks:
        m.expect(what, got, want)


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class MemoryDecodeHasNoAliasOnAnyAddressBit(CosimTest):
    """Each of the 64 memory address bits inverted around every BAR0 register DW (at two
    BAR0 bases, complements of each other), every byte lane, walking ones and zeros: only
    BAR0 answers, reads return what the map and glibc say, no write lands through an
    alias (header, BAR0 and the generator read back after the writes)."""

    required = ("addr_bit_mem", "alias_mem")

    async def body(self) -> None:
        seq = await self.run(MemDecodeSweepSeq("mem_decode", self.rng))
        m = Mismatches()
        _expect_checks(m, seq)
        m.check()


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class IoDecodeClaimsOnlyTheDebugconPort(CosimTest):
    """Each of the 16 port bits inverted around port 0xe9, each lane of its DW, walking
    ones (every power of two) and zeros, read and written: only 0xe9 answers, and the
    console carries exactly the bytes written there."""

    required = ("addr_bit_io", "alias_io")

    async def body(self) -> None:
        console = self.ep.console
        start = len(console.data)
        seq = await self.run(IoDecodeSweepSeq("io_decode", self.rng))
        await self.drain()
        m = Mismatches()
        _expect_checks(m, seq)
        m.expect("console bytes of the I/O sweep", bytes(console.data[start:]),
                 bytes(seq.console))
        m.check()


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class ConfigDecodeHasNoAliasIn4KiB(CosimTest):
    """Each of the 12 config offset bits inverted around every implemented DW, every lane,
    walking ones and zeros; every DW of the 4 KiB written once with the header read back:
    offsets from 0x100 on read 0 and no write reaches a register through an alias."""

    required = ("addr_bit_cfg", "alias_cfg")

    async def body(self) -> None:
        seq = await self.run(ConfigDecodeSweepSeq("cfg_decode", self.rng))
        m = Mismatches()
        _expect_checks(m, seq)
        m.check()


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class ResetMidStreamAbandonsWorkAndRestartsAsSrand1(CosimTest):
    """Resets during seeding, with a read pending, and with console bytes queued: pending
    work is abandoned, and afterwards the device is as after power-up (srand(1))."""

    required = ("reset_mid_stream",)

    async def body(self) -> None:
        m = Mismatches()
        seq = _MidStreamResetSeq("midstream", self.ep.console)
        await self.run(seq)
        for i, values in enumerate(seq.after_reset):
            m.expect(f"numbers after reset #{i}", values, glibc_sequence(1, 3))
        m.expect("pending read abandoned by the reset", seq.aborted_read, True)
        m.check()


class _MidStreamResetSeq(HostSeq):
    def __init__(self, name: str, console: ConsoleMonitor) -> None:
        super().__init__(name)
        self.console = console
        self.after_reset: list[list[int]] = []
        self.aborted_read = False

    async def _after(self) -> None:
        await self.ep.reset()
        await EnableSeq("enable").start(self.sequencer)
        self.after_reset.append([await self.rng_read() for _ in range(3)])

    async def body(self) -> None:
        await EnableSeq("enable").start(self.sequencer)
        # 1. Reset during seeding, with a read racing the seeding still pending.
        await self.seed(0xC0FFEE)
        read = await self.ep.issue(Request(Kind.MEM_READ, BAR0_BASE + _RNG))
        await self._after()
        await read.done.wait()
        self.aborted_read = read.aborted
        # 2. Reset with console bytes queued behind a stalled sink (fewer than the FIFO
        # holds, so every I/O write completes).
        saved = self.console.backpressure
        self.console.backpressure = itertools.repeat(True)
        for byte in b"lost in reset":
            await self.host.io_write(DEBUGCON_PORT, byte, 1)
        self.console.backpressure = saved
        await self._after()


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class DebugconStreamLosesNothingUnderBackpressure(CosimTest):
    """Thousands of console bytes under back-pressure: none lost, none reordered."""

    required = ("debugcon",)
    length = 1200

    async def body(self) -> None:
        await self.enable()
        data = self.rng.randbytes(self.length)
        console = self.ep.console
        start = len(console.data)
        seq = await self.run(DebugconSeq("stream", data, read_every=97))
        await self.drain()
        m = Mismatches()
        got = bytes(console.data[start:])
        if got != data:
            diff = next((i for i, (a, b) in enumerate(zip(got, data, strict=False)) if a != b),
                        min(len(got), len(data)))
            m.items.append(f"console stream differs from the {len(data)} bytes written: "
                           f"got {len(got)} bytes, first difference at byte {diff}")
        for _, value in seq.results:
            m.expect("debugcon detection read", value, DEBUGCON_READ_VALUE)
        m.check()


@pyuvm.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
class RandomMixMatchesModel(CosimTest):
    """Constrained-random mix of everything, checked by the scoreboard."""

    required = ("kind", "seed_class", "debugcon", "unsupported", "read_during_seeding")
    count = 400

    async def body(self) -> None:
        await self.enable()
        await self.run(RandomSeq("random", self.rng, self.count))
