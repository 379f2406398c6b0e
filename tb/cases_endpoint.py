"""cocotb tests of `RtlEndpoint` itself, the RTL backend the QEMU bridge uses (no pyuvm).

The same byte-addressed `Host` calls go to the RTL and to the golden model side by side;
every returned value and the console bytes must agree.  Plus the endpoint's error paths:
a reset abandons pending work loudly, a stuck device gives a timeout, not a hang.
"""

from __future__ import annotations

import itertools
import random

import cocotb
from cocotb.handle import SimHandleBase
from cocotb.triggers import Timer

from models.device import Device
from models.glibc_oracle import glibc_sequence
from models.regmap import COMMAND_IO, COMMAND_MEMORY, DEBUGCON_PORT, RNG_ID_VALUE
from models.transaction import Host, Kind, Request, Space
from tb.request_driver import BusAborted
from tb.rtl_endpoint import RtlEndpoint
from tb.timing import make_pattern

BAR0 = 0xFEBF_1000
# Simulated-time cap per test (each needs well under 1 ms): a hang fails, not runs on.
SIM_TIME_LIMIT_MS = 5


async def _enable(*hosts: Host) -> None:
    for h in hosts:
        await h.cfg_write(0x10, BAR0)
        await h.cfg_write(0x04, COMMAND_MEMORY | COMMAND_IO, 2)


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def endpoint_host_accesses_match_model(dut: SimHandleBase) -> None:
    """Random accesses of every size in every space: RTL and model return the same."""
    rnd = random.Random(random.getrandbits(64))
    rtl_console = bytearray()
    model_console = bytearray()
    ep = RtlEndpoint(dut, console_sink=rtl_console.extend, idle=make_pattern("random", 1),
                     backpressure=make_pattern("random", 2),
                     console_backpressure=make_pattern("bursty", 3))
    await ep.start()
    rtl, model = Host(ep), Host(Device(model_console.extend))
    await _enable(rtl, model)
    diffs = []
    for i in range(600):
        space = rnd.choice((Space.MEM, Space.MEM, Space.CFG, Space.IO))
        size = rnd.choice((1, 2, 4, 8))
        if space is Space.MEM:
            addr = BAR0 + rnd.choice((0, 0, 4, 8, 0xC, 0xFF8)) + rnd.randrange(4)
        elif space is Space.CFG:
            addr = rnd.randrange(0x40)
            size = min(size, 4)
        else:
            addr, size = rnd.choice(((DEBUGCON_PORT, 1), (DEBUGCON_PORT, 1), (0xE8, 2),
                                     (0x80, 1)))
        if rnd.random() < 0.5 and not (space is Space.CFG and addr < 0x14):
            value = rnd.getrandbits(8 * size)
            await rtl.write(space, addr, value, size)
            await model.write(space, addr, value, size)
        else:
            got, want = await rtl.read(space, addr, size), await model.read(space, addr, size)
            if got != want:
                diffs.append(f"#{i} read {space.name} {addr:#x}/{size}: RTL {got:#x}, "
                             f"model {want:#x}")
    await Timer(2000, "ns")  # let the console FIFO drain under back-pressure
    assert not diffs, "RTL and model differ:\n  " + "\n  ".join(diffs[:20])
    assert rtl_console == model_console, (
        f"console: RTL put out {len(rtl_console)} bytes, model {len(model_console)}; "
        f"first difference at {next((i for i, (a, b) in enumerate(zip(rtl_console, model_console, strict=False)) if a != b), min(len(rtl_console), len(model_console)))}"  # noqa: E501
    )
    assert not ep.errors, f"endpoint errors: {ep.errors}"


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def endpoint_reset_abandons_pending_read_loudly(dut: SimHandleBase) -> None:
    """A read pending across a reset raises BusAborted; afterwards the RNG is srand(1)."""
    ep = RtlEndpoint(dut)
    await ep.start()
    host = Host(ep)
    await _enable(host)
    await host.mem_write(BAR0 + 4, 0xBEEF)  # seeding starts (343 cycles)
    pending = await ep.issue(Request(Kind.MEM_READ, BAR0, tag=77))
    assert pending is not None
    await ep.reset()
    try:
        cpl = await ep.complete(pending)
    except BusAborted:
        pass
    else:
        raise AssertionError(f"read pending across a reset completed with {cpl}")
    await _enable(host)
    got = [await host.mem_read(BAR0) for _ in range(3)]
    assert got == glibc_sequence(1, 3), f"after reset got {got}, glibc srand(1) gives " \
        f"{glibc_sequence(1, 3)}"


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def endpoint_stuck_console_times_out_instead_of_hanging(dut: SimHandleBase) -> None:
    """With the console sink never ready the FIFO fills; the next I/O write cannot
    complete and `transact` raises TimeoutError after `timeout_cycles`."""
    ep = RtlEndpoint(dut, console_backpressure=itertools.repeat(True), timeout_cycles=3000)
    await ep.start()
    host = Host(ep)
    written = 0
    try:
        for written in range(64):  # noqa: B007 -- the count is reported
            await host.io_write(DEBUGCON_PORT, 0x41, 1)
    except TimeoutError:
        pass
    else:
        raise AssertionError("64 console bytes written to a never-ready sink, no timeout")
    assert written >= 16, f"timed out after only {written} bytes: the FIFO holds 16"
    ep.console.backpressure = None
    await ep.reset()
    await _enable(host)
    assert await host.mem_read(BAR0 + 8) == RNG_ID_VALUE, "device unusable after the timeout"


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def endpoint_rejects_outstanding_tag_reuse(dut: SimHandleBase) -> None:
    """Two outstanding requests may not share a tag: the second is refused at once."""
    ep = RtlEndpoint(dut)
    await ep.start()
    await _enable(Host(ep))
    await Host(ep).mem_write(BAR0 + 4, 5)
    first = await ep.issue(Request(Kind.MEM_READ, BAR0, tag=9))
    try:
        await ep.issue(Request(Kind.MEM_READ, BAR0, tag=9))
    except ValueError:
        pass
    else:
        raise AssertionError("a second request with an outstanding tag was accepted")
    assert first is not None
    cpl = await ep.complete(first)
    assert cpl.data == glibc_sequence(5, 1)[0], f"first read returned {cpl}"
