"""The RTL RNG is bit-exact with glibc's srand()/rand() (glibc through ctypes is the oracle).

Runs in Amaranth's simulator: through the whole `Top` with the `Host` API, and on
`rng.Peripheral` alone for the seeding cycle count.
"""

from __future__ import annotations

import random

from amaranth.sim import Simulator, SimulatorContext

from models.contract.regmap import BAR0_TEST_BASE, CAPS_RNG64, COMMAND_MEMORY, RNG_CAPS_VALUE
from models.contract.transaction import Host, Kind, Request
from models.glibc_oracle import glibc_sequence
from models.glibc_rand import DEGREE, DISCARD, SEPARATION, lcg_step
from rtl import rng
from rtl.top import Top
from tests.rtl_harness import ConsoleSink, SimEndpoint, run_top

BAR = BAR0_TEST_BASE
RNG, SEED, ID, CAPS, RNG64 = BAR + 0x0, BAR + 0x4, BAR + 0x8, BAR + 0xC, BAR + 0x10
EDGE_SEEDS = [0, 1, 2, 0x7FFF_FFFE, 0x7FFF_FFFF, 0x8000_0000, 0x8000_0001, 0xFFFF_FFFE,
              0xFFFF_FFFF]
# Rising edges after the one accepting the SEED write until ready (docs/rtl.md): 343.
SEEDING_CYCLES = (DEGREE - 1) + SEPARATION + DISCARD


async def enable(host: Host) -> None:
    await host.cfg_write(0x10, BAR)
    await host.cfg_write(0x04, COMMAND_MEMORY, 2)


def test_rng_reads_after_seed_equal_glibc_for_edge_and_random_seeds() -> None:
    rnd = random.Random(20261121)
    seeds = EDGE_SEEDS + [rnd.getrandbits(32) for _ in range(6)]

    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        host = Host(SimEndpoint(ctx, top))
        await enable(host)
        for seed in seeds:
            await host.mem_write(SEED, seed)
            got = [await host.mem_read(RNG) for _ in range(40)]
            want = glibc_sequence(seed, 40)
            assert got == want, f"seed {seed:#x}: RTL {got[:3]}... != glibc {want[:3]}..."

    run_top(body)


def test_rng_before_any_seed_write_is_srand_1() -> None:
    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        host = Host(SimEndpoint(ctx, top))
        await enable(host)
        got = [await host.mem_read(RNG) for _ in range(20)]
        assert got == glibc_sequence(1, 20), f"after reset RTL gave {got[:3]}..."

    run_top(body)


def test_rng_read_during_seeding_waits_and_narrow_reads_advance() -> None:
    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        ep = SimEndpoint(ctx, top)
        host = Host(ep)
        await enable(host)
        want = glibc_sequence(0xDEAD_BEEF, 4)
        await host.mem_write(SEED, 0xDEAD_BEEF)
        first = await host.mem_read(RNG)
        assert first == want[0], f"read during seeding: {first:#x} != {want[0]:#x}"
        assert ep.last_latency > DISCARD, f"read during seeding took {ep.last_latency} cycles"
        # A 1-byte read returns its lane but still advances by one whole number.
        low = await host.mem_read(RNG + 1, 1)
        assert low == (want[1] >> 8) & 0xFF, f"byte 1 read {low:#x} of {want[1]:#x}"
        assert await host.mem_read(RNG) == want[2], "a narrow read did not advance once"
        # Reseeding in the middle of seeding restarts it.
        await host.mem_write(SEED, 5)
        await host.mem_write(SEED, 6)
        got = [await host.mem_read(RNG) for _ in range(3)]
        assert got == glibc_sequence(6, 3), f"reseed during seeding: {got}"

    run_top(body)


def test_rng_register_semantics_partial_seed_seed_reads_rng_writes_id() -> None:
    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        ep = SimEndpoint(ctx, top)
        host = Host(ep)
        await enable(host)
        await host.mem_write(SEED, 7)
        await host.mem_write(SEED, 9, 2)  # partial: ignored
        await ep.transact(Request(Kind.MEM_WRITE, SEED, be=0x7, data=11))  # partial: ignored
        await host.mem_write(RNG, 13)  # writes to RNG are ignored
        assert await host.mem_read(SEED) == 0, "SEED does not read 0"
        assert await host.mem_read(BAR + 0x18) == 0, "an unused offset does not read 0"
        assert await host.mem_read(ID) == 0x524E_4701, "ID reads wrong"
        got = [await host.mem_read(RNG) for _ in range(5)]
        assert got == glibc_sequence(7, 5), f"after partial SEED writes: {got}"

    run_top(body)


def test_rng64_8_byte_reads_return_two_glibc_numbers_low_dw_first() -> None:
    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        host = Host(SimEndpoint(ctx, top))
        await enable(host)
        caps = await host.mem_read(CAPS)
        assert caps == RNG_CAPS_VALUE and caps & CAPS_RNG64, f"CAPS reads {caps:#x}"
        for seed in (0, 0x8000_0000, 0xDEAD_BEEF):
            await host.mem_write(SEED, seed)
            got = [await host.mem_read(RNG64, 8) for _ in range(10)]
            want = glibc_sequence(seed, 20)
            pairs = [want[i] | want[i + 1] << 32 for i in range(0, 20, 2)]
            assert got == pairs, f"seed {seed:#x}: RTL {got[:2]}... != glibc pairs {pairs[:2]}..."

    run_top(body)


def test_rng64_dw_reads_alone_interleave_with_rng_as_one_sequence() -> None:
    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        ep = SimEndpoint(ctx, top)
        host = Host(ep)
        await enable(host)
        await host.mem_write(SEED, 42)
        want = glibc_sequence(42, 7)
        first = await host.mem_read(RNG64 + 4)  # the high DW alone, right while seeding
        assert first == want[0], f"0x14 read during seeding {first:#x} != {want[0]:#x}"
        assert ep.last_latency > DISCARD, f"0x14 read during seeding took {ep.last_latency}"
        got = [await host.mem_read(RNG64), await host.mem_read(RNG),
               await host.mem_read(RNG64 + 4), await host.mem_read(RNG64 + 2, 2)]
        assert got[:3] == want[1:4], f"0x10, RNG, 0x14 reads {got[:3]} != glibc {want[1:4]}"
        assert got[3] == want[4] >> 16, f"2-byte read of 0x12 {got[3]:#x} of {want[4]:#x}"
        await host.mem_write(RNG64, 0xFFFF_FFFF_FFFF_FFFF, 8)  # writes are ignored
        rest = [await host.mem_read(RNG) for _ in range(2)]
        assert rest == want[5:], f"after writing RNG64: {rest} != glibc {want[5:]}"

    run_top(body)


def test_seeding_takes_343_cycles_after_the_seed_write_until_ready() -> None:
    dut = rng.Peripheral()
    counts: list[int] = []

    async def seed_and_count(ctx: SimulatorContext, seed: int) -> None:
        for name, value in (("stb", 1), ("we", 1), ("addr", 4), ("be", 0xF), ("w_data", seed)):
            ctx.set(getattr(dut.bus, name), value)
        _, _, ack = await ctx.tick().sample(dut.bus.ack)  # the edge that accepts the write
        assert ack, "a SEED write was not acknowledged in its strobe cycle"
        ctx.set(dut.bus.stb, 0)
        for cycle in range(1, 1000):
            await ctx.tick()
            if ctx.get(dut.ready):
                counts.append(cycle)
                return
        raise AssertionError("the generator never became ready")

    async def tb(ctx: SimulatorContext) -> None:
        for _ in range(1000):  # after reset: seeding with 1 first
            if ctx.get(dut.ready):
                break
            await ctx.tick()
        await seed_and_count(ctx, 0x8000_0000)
        await seed_and_count(ctx, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert counts == [SEEDING_CYCLES] * 2, f"seeding took {counts} cycles, not {SEEDING_CYCLES}"


def test_lcg_step_equals_glibc_schrage_for_signed_edge_words() -> None:
    # Oracle: glibc's Schrage step on int32 (random_r.c), written out here independently.
    def schrage(word: int) -> int:
        w = word - (1 << 32) if word & 0x8000_0000 else word
        hi = abs(w) // 127773 * (-1 if w < 0 else 1)  # C division truncates toward zero
        lo = w - hi * 127773
        w = 16807 * lo - 2836 * hi
        return w + 2147483647 if w < 0 else w

    rnd = random.Random(7)
    words = [0, 1, 2, 127773, 0x7FFF_FFFE, 0x7FFF_FFFF, 0x8000_0000, 0x8000_0001,
             0xFFFF_FFFE, 0xFFFF_FFFF] + [rnd.getrandbits(32) for _ in range(200)]
    dut = rng.Lcg()

    async def tb(ctx: SimulatorContext) -> None:
        for word in words:
            ctx.set(dut.word, word)
            got, want = ctx.get(dut.result), schrage(word)
            assert got == want, f"LCG of {word:#x}: RTL {got:#x} != glibc Schrage {want:#x}"
            assert want == lcg_step(word - (1 << 32) if word >> 31 else word), "model differs"

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
