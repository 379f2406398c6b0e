"""cocotb tests of the testbench's `RtlEndpoint` itself (no pyuvm).

The same byte-addressed `Host` calls go to the RTL and to the golden model side by side;
every returned value and the console bytes must agree, and the first difference fails
the case at once (`tb.access_mix`).  Every reset is followed by the reset read-back
against the register map (`tb.reset_check`).  Plus the endpoint's error paths: a reset
abandons pending work loudly, a stuck device gives a timeout, not a hang.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import cocotb
from cocotb.handle import SimHandleBase

from models.contract.regmap import DEBUGCON_PORT, RNG_ID_VALUE
from models.contract.transaction import Host, Kind, Request
from models.device import Device
from models.glibc_oracle import glibc_sequence
from tb.access_mix import BAR0, ConsoleCheck, accesses_match_model, enable
from tb.drain import drain_streams
from tb.request_driver import BusAborted
from tb.reset_check import reset_checked, start_checked
from tb.rtl_endpoint import RtlEndpoint
from tb.timing import make_pattern

__all__ = ["host_mix_matches_model"]

# Simulated-time cap per test (each needs well under 1 ms): a hang fails, not runs on.
SIM_TIME_LIMIT_MS = 5


async def host_mix_matches_model(dut: SimHandleBase, count: int, name: str,
                                 plant: Callable[[RtlEndpoint], None] | None = None) -> None:
    """`count` random accesses of every size in every space on the RTL and on the model,
    under random idle and back-pressure; the first read or console byte that differs
    fails.  `name`: the test, for its stimulus line (tb.seeding).  `plant` may break the
    endpoint's view of the RTL first (`tb.cases_planted`)."""
    rnd = random.Random(random.getrandbits(64))  # from the run's seed (tb.seeding)
    console = ConsoleCheck()
    ep = RtlEndpoint(dut, console_sink=console.rtl_sink,
                     idle=make_pattern("random", rnd.getrandbits(32)),
                     backpressure=make_pattern("random", rnd.getrandbits(32)),
                     console_backpressure=make_pattern("bursty", rnd.getrandbits(32)))
    if plant is not None:
        plant(ep)
    rtl = await start_checked(ep)
    model = Host(Device(console.model_sink))
    await enable(rtl, model)
    await accesses_match_model(rtl, model, rnd, count, console, console_in_step=False)
    # The console FIFO drains under back-pressure: lost bytes fail by assertion there.
    await drain_streams(dut, ep.period_ns, lambda: ep.outstanding, lambda: console.missing,
                        console.describe_missing, ep.timeout_cycles)
    ep.log_stimulus(name)
    console.check_complete("after the drain")
    assert not ep.errors, f"endpoint errors: {ep.errors}"


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def endpoint_host_accesses_match_model(dut: SimHandleBase) -> None:
    """Random accesses of every size in every space: RTL and model return the same."""
    await host_mix_matches_model(dut, 600, "endpoint_host_accesses_match_model")


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def endpoint_reset_abandons_pending_read_loudly(dut: SimHandleBase) -> None:
    """A read pending across a reset raises BusAborted; afterwards the RNG is srand(1)."""
    ep = RtlEndpoint(dut)
    host = await start_checked(ep)
    await enable(host)
    await host.mem_write(BAR0 + 4, 0xBEEF)  # seeding starts (343 cycles)
    pending = await ep.issue(Request(Kind.MEM_READ, BAR0, tag=77))
    assert pending is not None
    await reset_checked(ep)
    try:
        cpl = await ep.complete(pending)
    except BusAborted:
        pass
    else:
        raise AssertionError(f"read pending across a reset completed with {cpl}")
    await enable(host)
    got = [await host.mem_read(BAR0) for _ in range(3)]
    assert got == glibc_sequence(1, 3), f"after reset got {got}, glibc srand(1) gives " \
        f"{glibc_sequence(1, 3)}"


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def endpoint_stuck_console_times_out_instead_of_hanging(dut: SimHandleBase) -> None:
    """With the console sink never ready the FIFO fills; the next I/O write cannot
    complete and `transact` raises TimeoutError after `timeout_cycles`."""
    ep = RtlEndpoint(dut, console_backpressure=itertools.repeat(True), timeout_cycles=3000)
    host = await start_checked(ep)
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
    await reset_checked(ep)
    await enable(host)
    assert await host.mem_read(BAR0 + 8) == RNG_ID_VALUE, "device unusable after the timeout"


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def endpoint_rejects_outstanding_tag_reuse(dut: SimHandleBase) -> None:
    """Two outstanding requests may not share a tag: the second is refused at once."""
    ep = RtlEndpoint(dut)
    host = await start_checked(ep)
    await enable(host)
    await host.mem_write(BAR0 + 4, 5)
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
