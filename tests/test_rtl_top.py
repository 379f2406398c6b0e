"""Unit tests of rtl.top.Top in Amaranth's simulator, against the golden model Device.

The RNG's values are checked against glibc itself (tests/conftest.py) in test_rtl_rng.py;
here every completion of the RTL is compared with `models.device.Device`'s.
"""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator, SimulatorContext

from models.contract.regmap import (
    BAR0_SIZE,
    BAR0_TEST_BASE,
    COMMAND_MEMORY,
    CONFIG_DWORDS,
    RNG_ID_VALUE,
)
from models.contract.transaction import Completion, Host, Kind, Request, Status
from models.device import Device
from rtl import debugcon
from rtl.top import Top
from tests.rtl_harness import ConsoleSink, SimEndpoint, run_top

BAR = BAR0_TEST_BASE


async def enable(host: Host) -> None:
    await host.cfg_write(0x10, BAR)
    await host.cfg_write(0x04, COMMAND_MEMORY, 2)


def test_config_space_reads_as_the_model_and_bar_sizing_reads_back_the_size_mask() -> None:
    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        host = Host(SimEndpoint(ctx, top))
        model = Host(Device())
        for offset in range(0, 0x104, 4):
            got, want = await host.cfg_read(offset), await model.cfg_read(offset)
            assert got == want, f"config DW {offset:#x}: RTL {got:#010x} != model {want:#010x}"
        await host.cfg_write(0x10, 0xFFFF_FFFF)
        size = await host.cfg_read(0x10)
        assert size == 0xFFFF_F000, f"BAR0 sizing read back {size:#010x}, not 0xfffff000"
        await host.cfg_write(0x04, 0xFFFF_FFFF)
        cmd = await host.cfg_read(0x04)
        want = CONFIG_DWORDS[0x04].writable | CONFIG_DWORDS[0x04].reset
        assert cmd == want, (f"COMMAND/STATUS after all-ones {cmd:#010x} != writable bits "
                             f"and the read-only Capabilities List {want:#x}")
        await host.cfg_write(0x3C, 0xAB, 1)
        intr = await host.cfg_read(0x3C)
        assert intr == 0x1AB, f"INTERRUPT DW {intr:#x}: line 0xab written, pin 1 expected"

    run_top(body)


def test_memory_is_unsupported_until_command_mem_and_outside_bar0() -> None:
    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        ep = SimEndpoint(ctx, top)
        host = Host(ep)
        await host.cfg_write(0x10, BAR)
        cpl = await ep.transact(Request(Kind.MEM_READ, BAR + 8, tag=7))
        assert cpl == Completion(7, Status.UR, 0), f"MEM read with COMMAND.MEM clear: {cpl}"
        await host.cfg_write(0x04, COMMAND_MEMORY, 2)
        cpl = await ep.transact(Request(Kind.MEM_READ, BAR + 8, tag=8))
        assert cpl == Completion(8, Status.SC, RNG_ID_VALUE), f"ID read in BAR0: {cpl}"
        for addr in (BAR - 4, BAR + BAR0_SIZE, (1 << 32) | BAR, 0):
            cpl = await ep.transact(Request(Kind.MEM_READ, addr, tag=9))
            assert cpl == Completion(9, Status.UR, 0), f"MEM read at {addr:#x}: {cpl}"

    run_top(body)


def test_posted_writes_produce_no_completion() -> None:
    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        ep = SimEndpoint(ctx, top)
        await enable(Host(ep))
        for addr in (BAR + 0x4, BAR + 0x10, 0x1000):  # claimed and unclaimed
            await ep.transact(Request(Kind.MEM_WRITE, addr, data=5, tag=3))
            for _ in range(20):
                _, _, valid = await ctx.tick().sample(top.cpl.valid)
                assert not valid, f"MEM_WRITE at {addr:#x} produced a completion"

    run_top(body)


def test_debugcon_bytes_arrive_in_order_and_writes_wait_while_the_fifo_is_full() -> None:
    text = b"hello from the RTL, long enough to fill the FIFO twice over!"
    depth = debugcon.DEPTH

    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        ep = SimEndpoint(ctx, top)
        host = Host(ep)
        assert await host.io_read(0xE9) == 0xE9, "port 0xe9 does not read 0xe9"
        cpl = await ep.transact(Request(Kind.IO_READ, 0xE8, be=0xF, tag=1))
        assert cpl == Completion(1, Status.SC, 0xE900), f"IO DW 0xe8 read: {cpl}"
        sink.paused = True
        latencies = []
        for byte in text[:depth]:
            await host.io_write(0xE9, byte)
            latencies.append(ep.last_latency)
        assert max(latencies) < 5, f"writes into a FIFO with room were slow: {latencies}"
        assert not sink.data, "the sink was paused but received bytes"
        # The FIFO is full: the next write is accepted but its completion waits for room.
        ep.timeout = 50
        with pytest.raises(TimeoutError):
            await host.io_write(0xE9, text[depth])
        sink.paused = False
        for _ in range(100):
            _, _, valid = await ctx.tick().sample(top.cpl.valid)
            if valid:
                break
        else:
            raise AssertionError("the delayed debugcon write never completed")
        ctx.set(top.cpl.ready, 1)
        await ctx.tick()
        ctx.set(top.cpl.ready, 0)
        ep.timeout = 2000
        for byte in text[depth + 1:]:
            await host.io_write(0xE9, byte)
        await ctx.tick().repeat(100)
        assert bytes(sink.data) == text, f"console got {bytes(sink.data)!r}, sent {text!r}"

    run_top(body)


def test_completion_tags_echo_requests_under_back_pressure() -> None:
    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        ep = SimEndpoint(ctx, top, idle_max=3, stall=0.5)
        for tag in (0, 1, 0x55, 0xAA, 0xFF):
            for kind, addr in ((Kind.CFG_READ, 0), (Kind.IO_READ, 0x80), (Kind.IO_WRITE, 0xE8)):
                cpl = await ep.transact(Request(kind, addr, be=0x2, tag=tag))
                assert cpl is not None and cpl.tag == tag, f"{kind.name} tag {tag}: {cpl}"

    run_top(body)


def random_request(rnd: random.Random, tag: int) -> Request:
    """A request of any kind, mostly aimed at something the device decodes."""
    kind = rnd.choice(list(Kind))
    if kind in (Kind.MEM_READ, Kind.MEM_WRITE):
        addr = rnd.choice([BAR, BAR + 4, BAR + 8, BAR + 0xC, BAR + 0x10, BAR + 0x14,
                           BAR + 0x18, BAR + 0xFFC, BAR - 4, BAR + BAR0_SIZE, (1 << 40) | BAR])
    elif kind in (Kind.CFG_READ, Kind.CFG_WRITE):
        addr = rnd.choice([0x0, 0x4, 0x8, 0xC, 0x10, 0x14, 0x2C, 0x3C, 0x40, 0xFC, 0x100])
    else:
        addr = rnd.choice([0xE8, 0xE8, 0xE4, 0xEC, 0x3F8])
    be = rnd.choice([0xF, 0xF, 0x1, 0x2, 0x3, 0xC, 0x8, 0x0])
    data = rnd.choice([0, 1, 0xFFFF_FFFF, 0x8000_0000, rnd.getrandbits(32)])
    if kind is Kind.CFG_WRITE and addr == 0x10:
        data = BAR  # keep BAR0 where the memory requests go, mostly
    if kind is Kind.CFG_WRITE and addr == 0x4 and rnd.random() < 0.8:
        data |= COMMAND_MEMORY
    return Request(kind, addr, be, data, tag)



@pytest.mark.parametrize("idle_max,stall,con_stall", [(0, 0.0, 0.0), (3, 0.6, 0.8)])
def test_random_requests_complete_as_the_model_does(idle_max: int, stall: float,
                                                    con_stall: float) -> None:
    rnd = random.Random(1234 + idle_max)
    console = bytearray()
    model = Device(console_sink=console.extend)

    requests = [random_request(rnd, i & 0xFF) for i in range(400)]

    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        ep = SimEndpoint(ctx, top, idle_max=idle_max, stall=stall)
        await enable(Host(ep))
        await enable(Host(model))
        for req in requests:
            got = await ep.transact(req)
            want = model.handle(req)
            assert got == want, f"{req}: RTL {got} != model {want}"
        await ctx.tick().repeat(200)
        assert bytes(sink.data) == bytes(console), "console bytes differ from the model's"

    run_top(body, con_stall=con_stall)


def test_latency_in_cycles_per_request_is_as_documented_in_docs_rtl_md() -> None:
    # Rising edges from the one accepting the request to the one taking its completion,
    # with `cpl.ready` high: docs/rtl.md, "Latency".
    cases = [
        ("CFG read", Request(Kind.CFG_READ, 0x0), 2),
        ("CFG write", Request(Kind.CFG_WRITE, 0x3C, 1, 5), 2),
        ("RNG read (ready)", Request(Kind.MEM_READ, BAR), 2),
        ("ID read", Request(Kind.MEM_READ, BAR + 8), 2),
        ("CAPS read", Request(Kind.MEM_READ, BAR + 0xC), 2),
        ("RNG64 low DW read (ready)", Request(Kind.MEM_READ, BAR + 0x10), 2),
        ("RNG64 high DW read (ready)", Request(Kind.MEM_READ, BAR + 0x14), 2),
        ("SEED read", Request(Kind.MEM_READ, BAR + 4), 2),
        ("IO write (FIFO has room)", Request(Kind.IO_WRITE, 0xE8, 2, 0x4100), 2),
        ("IO read", Request(Kind.IO_READ, 0xE8, 2), 2),
        ("unsupported request", Request(Kind.IO_READ, 0x80, 2), 2),
        ("SEED write (posted)", Request(Kind.MEM_WRITE, BAR + 4, data=3), 0),
        ("RNG read right after SEED write", Request(Kind.MEM_READ, BAR), 344),
        ("SEED write again (posted)", Request(Kind.MEM_WRITE, BAR + 4, data=4), 0),
        ("RNG64 high DW read right after SEED write", Request(Kind.MEM_READ, BAR + 0x14), 344),
    ]

    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        ep = SimEndpoint(ctx, top)
        await enable(Host(ep))
        await ctx.tick().repeat(400)  # let seeding after reset finish
        for name, req, cycles in cases:
            await ep.transact(req)
            assert ep.last_latency == cycles, f"{name}: {ep.last_latency} cycles, not {cycles}"

    run_top(body)


@pytest.mark.parametrize("stall", [0.0, 0.5])
def test_back_to_back_requests_complete_in_order_as_the_model_does(stall: float) -> None:
    rnd = random.Random(99)
    setup = [Request(Kind.CFG_WRITE, 0x10, data=BAR, tag=1),
             Request(Kind.CFG_WRITE, 0x04, be=0x3, data=COMMAND_MEMORY, tag=2)]
    requests = setup + [random_request(rnd, i & 0xFF) for i in range(300)]
    model = Device()
    want = [c for c in (model.handle(r) for r in requests) if c is not None]
    top = Top()
    got: list[Completion] = []
    accepted: list[int] = []

    async def drive(ctx: SimulatorContext) -> None:
        # `valid` stays high from one request to the next: back-to-back offers.
        cycle = 0
        for req in requests:
            ctx.set(top.req.valid, 1)
            for name in ("kind", "tag", "addr", "be", "data"):
                ctx.set(getattr(top.req, name), int(getattr(req, name)))
            for _ in range(2000):
                _, _, ready = await ctx.tick().sample(top.req.ready)
                cycle += 1
                if ready:
                    accepted.append(cycle)
                    break
            else:
                raise TimeoutError(f"{req} not accepted")
        ctx.set(top.req.valid, 0)

    async def collect(ctx: SimulatorContext) -> None:
        for _ in range(50 * len(requests)):
            take = rnd.random() >= stall
            ctx.set(top.cpl.ready, take)
            _, _, valid, tag, status, data = await ctx.tick().sample(
                top.cpl.valid, top.cpl.tag, top.cpl.status, top.cpl.data)
            if valid and take:
                got.append(Completion(tag, Status(status), data))
                if len(got) == len(want):
                    return
        raise TimeoutError(f"only {len(got)} of {len(want)} completions arrived")

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(collect)
    sim.run()
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"completion {i}: RTL {g} != model {w}"
    if not stall:
        # The requests after each of the two setup config writes: accepted 2 edges later.
        gaps = {b - a for a, b in zip(accepted[:2], accepted[1:3], strict=True)}
        assert gaps == {2}, f"back-to-back config requests accepted {gaps} edges apart"
