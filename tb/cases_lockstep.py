"""cocotb tests of `LockstepEndpoint` on the lock-step build (toplevel `cosim_lockstep`).

The same byte-addressed `Host` calls go to the RTL (through the lock-step wrapper) and to the
golden model side by side; every returned value and the console bytes must agree, the
console bytes already after the I/O write that produced them, and the first difference
fails the case at once (`tb.access_mix`).  Every reset is followed by the reset read-back
against the register map (`tb.reset_check`).  Plus the error paths: a
request that is not done in time raises TimeoutError; a reset keeps console bytes written
before it and restarts the RNG at srand(1); on Verilator, where the main loop serves
requests directly, other cocotb triggers still fire at their time.  Run by
tb/test_lockstep.py on both simulators.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import cocotb
from cocotb.handle import SimHandleBase
from cocotb.triggers import Timer
from qbridge.rtl.lockstep_endpoint import LockstepEndpoint
from qbridge.rtl.lockstep_wrapper import RING

from models.contract.regmap import DEBUGCON_PORT, RNG_ID_VALUE
from models.contract.transaction import Host
from models.device import Device
from models.glibc_oracle import glibc_sequence
from tb.access_mix import BAR0, ConsoleCheck, ConsoleMismatch, accesses_match_model, enable
from tb.plant import corrupt_lockstep_console, corrupt_lockstep_tag, fails_with
from tb.reset_check import reset_checked, start_checked

SIM_TIME_LIMIT_MS = 5  # each case needs well under 1 ms of simulated time


async def lockstep_mix_matches_model(dut: SimHandleBase, count: int,
                                     plant: Callable[[LockstepEndpoint], None] | None = None,
                                     ) -> ConsoleCheck:
    """`count` random accesses on the RTL and on the model; the first read that differs
    fails, and so does the first access after which the console is not exactly the
    model's (the lock-step path hands a byte to its sink before its I/O write returns).
    `plant` may break the endpoint's view of the RTL first (the planted cases below)."""
    rnd = random.Random(random.getrandbits(64))
    console = ConsoleCheck()
    ep = LockstepEndpoint(dut, console_sink=console.rtl_sink)
    if plant is not None:
        plant(ep)
    rtl = await start_checked(ep)
    model = Host(Device(console.model_sink))
    await enable(rtl, model)
    await accesses_match_model(rtl, model, rnd, count, console, console_in_step=True)
    return console


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def lean_host_accesses_match_model(dut: SimHandleBase) -> None:
    """Random accesses of every size in every space: RTL and model return the same, and
    each console byte is at the sink when its I/O write returns."""
    console = await lockstep_mix_matches_model(dut, 1500)
    assert len(console.model) > RING, f"only {len(console.model)} console bytes exercised"


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def lean_console_keeps_every_byte_in_order(dut: SimHandleBase) -> None:
    """Many times the ring's size of console bytes, back to back: none lost or reordered,
    each at the sink when its I/O write returns."""
    console = ConsoleCheck()
    ep = LockstepEndpoint(dut, console_sink=console.rtl_sink)
    host = await start_checked(ep)
    sent = bytes(random.getrandbits(8) for _ in range(40 * RING))
    for i, b in enumerate(sent):
        console.current = f"write #{i} of {b:#04x}"
        console.model_sink(bytes([b]))
        await host.io_write(DEBUGCON_PORT, b, 1)
        console.check_complete(f"after write #{i}")
    await ep.drain_console()
    console.check_complete("after the drain")


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def lean_reset_keeps_console_and_restarts_rng(dut: SimHandleBase) -> None:
    """Bytes written right before a reset reach the sink; after it the RNG is srand(1)."""
    console = bytearray()
    ep = LockstepEndpoint(dut, console_sink=console.extend)
    host = await start_checked(ep)
    await enable(host)
    await host.mem_write(BAR0 + 4, 0xBEEF)
    first = await host.mem_read(BAR0)
    assert first == glibc_sequence(0xBEEF, 1)[0], f"after SEED 0xbeef read {first:#x}"
    for b in b"bye":
        await host.io_write(DEBUGCON_PORT, b, 1)
    await reset_checked(ep)
    assert bytes(console) == b"bye", f"console across the reset: {bytes(console)!r}"
    await enable(host)
    got = [await host.mem_read(BAR0) for _ in range(3)]
    assert got == glibc_sequence(1, 3), (
        f"after reset got {got}, glibc srand(1) gives {glibc_sequence(1, 3)}")


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def lean_slow_completion_times_out_instead_of_hanging(dut: SimHandleBase) -> None:
    """A read while the generator is seeding (hundreds of cycles) exceeds a 50-cycle
    timeout: TimeoutError, and after a reset the device works again."""
    ep = LockstepEndpoint(dut, timeout_cycles=50)
    host = await start_checked(ep)
    await enable(host)
    await host.mem_write(BAR0 + 4, 7)
    try:
        value = await host.mem_read(BAR0)
    except TimeoutError:
        pass
    else:
        raise AssertionError(f"read during seeding returned {value:#x} within 50 cycles")
    await reset_checked(ep)
    await enable(host)
    assert await host.mem_read(BAR0 + 8) == RNG_ID_VALUE, "device unusable after the timeout"
    # The same for an 8-byte RNG64 read, which the wrapper serves as one pair.
    await host.mem_write(BAR0 + 4, 7)
    try:
        value = await host.mem_read(BAR0 + 0x10, 8)
    except TimeoutError:
        pass
    else:
        raise AssertionError(f"8-byte read during seeding returned {value:#x} within 50 cycles")
    await reset_checked(ep)
    await enable(host)
    assert await host.mem_read(BAR0 + 8) == RNG_ID_VALUE, "device unusable after a pair timeout"


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def lean_other_triggers_fire_during_a_request(dut: SimHandleBase) -> None:
    """A `Timer` due in the middle of a slow request fires at its time, and a value-change
    trigger sees `done` toggle: the Verilator main loop's direct exchange leaves such
    requests to cocotb (and serves the others itself, which is checked too)."""
    ep = LockstepEndpoint(dut)
    host = await start_checked(ep)
    await enable(host)
    assert await host.mem_read(BAR0 + 8) == RNG_ID_VALUE
    direct = cocotb.SIM_NAME.lower().startswith("verilator")
    assert ep.direct_steps == (ep.exchanges if direct else 0), (
        f"{ep.direct_steps} of {ep.exchanges} exchanges served directly on {cocotb.SIM_NAME}")

    fired: list[int] = []

    async def tick(cycles: int) -> None:
        await Timer(cycles * ep.period_ns, "ns")
        fired.append(ep.cycle())

    # Seeding takes hundreds of cycles: the timer is due while the read is in flight.
    await host.mem_write(BAR0 + 4, 0xC0DE)
    start = ep.cycle()
    cocotb.start_soon(tick(20))
    await Timer(ep.period_ns, "ns")  # let the task start and register its timer
    served = ep.direct_steps
    value = await host.mem_read(BAR0)
    took = ep.cycle() - start
    assert value == glibc_sequence(0xC0DE, 1)[0], f"read {value:#x} after SEED 0xc0de"
    assert took > 20, f"the read took {took} cycles; the case needs more than 20"
    assert fired == [start + 20], f"timer due at cycle {start + 20} fired at {fired}"
    assert ep.direct_steps == served, "the read ran past a due timer directly"

    toggles: list[int] = []

    async def watch() -> None:
        await dut.done.value_change
        toggles.append(ep.cycle())

    cocotb.start_soon(watch())
    await Timer(ep.period_ns, "ns")  # let the watcher register its trigger
    assert await host.mem_read(BAR0 + 8) == RNG_ID_VALUE
    assert len(toggles) == 1, f"value-change trigger on done fired {len(toggles)} times"
    assert ep.direct_steps == served, "a read ran directly past a value-change trigger"
    # With no other trigger pending, requests are served directly again.
    assert await host.mem_read(BAR0 + 8) == RNG_ID_VALUE
    assert ep.direct_steps == served + direct


# Planted faults (tb.plant; as tb.cases_planted does for the cosim_top paths): each case
# passes only when the check fails at once with its mismatch message.  The short time
# limit turns a fault caught only by a timeout into a SimTimeoutError, which does not
# match, so such a case fails.
PLANTED_LIMIT_US = 200
_MIX_EXCHANGE = 40  # past the reset read-back and enable: lands in the random accesses


@cocotb.test(timeout_time=PLANTED_LIMIT_US, timeout_unit="us", expect_error=fails_with(
    ConsoleMismatch, match=r"console byte #3 from the RTL is 0x[0-9a-f]{2}, the model "
                           r"expects 0x[0-9a-f]{2} \(from access #\d+, write IO 0xe"))
async def lean_planted_console_byte_fails_at_once(dut: SimHandleBase) -> None:
    """A wrong console byte fails the lock-step case at the access that wrote it."""
    await lockstep_mix_matches_model(
        dut, 1500, plant=lambda ep: corrupt_lockstep_console(ep, 3))


@cocotb.test(timeout_time=PLANTED_LIMIT_US, timeout_unit="us", expect_error=fails_with(
    RuntimeError, match=r"completion tag \d+ for (CFG|MEM|IO)_"))
async def lean_planted_completion_tag_fails_at_once(dut: SimHandleBase) -> None:
    """A completion with a wrong tag fails the lock-step case at that request, naming it."""
    await lockstep_mix_matches_model(
        dut, 1500, plant=lambda ep: corrupt_lockstep_tag(ep, _MIX_EXCHANGE))
