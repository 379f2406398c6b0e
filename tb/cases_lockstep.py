"""cocotb tests of `LockstepEndpoint` on the lock-step build (toplevel `cosim_lockstep`).

The same byte-addressed `Host` calls go to the RTL (through the lock-step wrapper) and to the
golden model side by side; every returned value and the console bytes must agree, the
console bytes already after the I/O write that produced them, and the first difference
fails the case at once (`tb.access_mix`).  Every reset is followed by the reset read-back
against the register map (`tb.reset_check`).  Plus the error paths: a
request that is not done in time raises TimeoutError; a reset keeps console bytes written
before it and restarts the RNG at srand(1); on Verilator, where the main loop serves
requests directly, other cocotb triggers still fire at their time.  Batches
(`transact_all`, the bridge's debugcon bursts) must give the same results, console bytes
and cycle of every request as the same requests one at a time, fail the same way, and
leave due triggers to cocotb too.  Run by tb/test_lockstep.py on both simulators.
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
from models.contract.transaction import Completion, Host, Kind, Request, stream_requests
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


def _batch(tag0: int) -> list[Request]:
    """A debugcon burst with other requests among it: config and BAR reads, a SEED write
    (posted) and RNG reads waiting for its seeding, an I/O read of the port, an 8-byte
    read's two DWs (not as a pair: a longer batch), a UR."""
    reqs = [Request(Kind.IO_WRITE, DEBUGCON_PORT & ~3, 0b0010, b << 8) for b in b"burst:"]
    reqs += [Request(Kind.CFG_READ, 0x00), Request(Kind.MEM_READ, BAR0 + 8),
             Request(Kind.MEM_WRITE, BAR0 + 4, data=0x1234), Request(Kind.MEM_READ, BAR0),
             Request(Kind.MEM_READ, BAR0 + 0x10), Request(Kind.MEM_READ, BAR0 + 0x14),
             Request(Kind.IO_READ, DEBUGCON_PORT & ~3, 0b0010),
             Request(Kind.MEM_READ, BAR0 + 0x2000)]
    reqs += [Request(Kind.IO_WRITE, DEBUGCON_PORT & ~3, 0b0010, (i & 0xFF) << 8)
             for i in range(5 * RING + 3)]
    return [Request(r.kind, r.addr, r.be, r.data, (tag0 + i) & 0xFF)
            for i, r in enumerate(reqs)]


async def _one_by_one(ep: LockstepEndpoint, reqs: list[Request]
                      ) -> tuple[list[Completion | None], list[str]]:
    cpls, stamps = [], []
    for req in reqs:
        cpls.append(await ep.transact(req))
        stamps.append(ep.now())
    return cpls, stamps


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def lean_batch_equals_one_request_at_a_time(dut: SimHandleBase) -> None:
    """`transact_all` of a mixed batch: the same completions as the model, the same console
    bytes, and every request done at the same cycle (relative to the batch's start) as
    when the same requests go one at a time from the same state: the RTL sees no
    difference.  On Verilator the main loop serves the whole batch directly."""
    console = bytearray()
    ep = LockstepEndpoint(dut, console_sink=console.extend)
    await ep.start()
    host = Host(ep)
    reqs = _batch(7)
    model_console = bytearray()
    model = Device(model_console.extend)
    await enable(host, Host(model))
    want = await model.transact_all(reqs)

    await enable(host)
    start, served = ep.cycle(), ep.direct_steps
    got = await ep.transact_all(reqs)
    stamps = ep.batch_stamps()
    batch_console = bytes(console)
    assert got == want, "batch differs from the model: " + "; ".join(
        f"#{i} {r}: {g} != {w}" for i, (r, g, w) in enumerate(zip(reqs, got, want, strict=True))
        if g != w)[:400]
    assert batch_console == bytes(model_console), f"batch console {batch_console!r}"
    assert len(stamps) == len(reqs), f"{len(stamps)} stamps for {len(reqs)} requests"
    direct = cocotb.SIM_NAME.lower().startswith("verilator")
    assert ep.direct_steps - served == (len(reqs) if direct else 0), \
        f"{ep.direct_steps - served} of {len(reqs)} served directly on {cocotb.SIM_NAME}"

    await ep.reset()  # the same state again: then the same requests one at a time
    console.clear()
    await enable(host)
    start_one = ep.cycle()
    one, one_stamps = await _one_by_one(ep, reqs)
    assert one == want, "one at a time differs from the model"
    assert bytes(console) == batch_console, f"console one at a time {bytes(console)!r}"

    def cycles(marks: list[str], t0: int) -> list[int]:
        return [int(m[:-2]) // ep.period_ns - t0 for m in marks]

    assert cycles(stamps, start) == cycles(one_stamps, start_one), (
        "a request of the batch was done at another cycle than one at a time: "
        f"{cycles(stamps, start)[:12]}... vs {cycles(one_stamps, start_one)[:12]}...")


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def lean_batch_failure_keeps_console_and_raises(dut: SimHandleBase) -> None:
    """A request of a batch that is not done in time raises TimeoutError; the console bytes
    of the requests before it reach the sink first; after a reset batches work again."""
    console = bytearray()
    ep = LockstepEndpoint(dut, console_sink=console.extend, timeout_cycles=50)
    await ep.start()
    host = Host(ep)
    await enable(host)
    io = DEBUGCON_PORT & ~3
    reqs = [Request(Kind.IO_WRITE, io, 0b0010, b << 8, i) for i, b in enumerate(b"ok")]
    reqs += [Request(Kind.MEM_WRITE, BAR0 + 4, data=9, tag=2),
             Request(Kind.MEM_READ, BAR0, tag=3),  # seeding: hundreds of cycles
             Request(Kind.IO_WRITE, io, 0b0010, ord("X") << 8, 4)]
    try:
        await ep.transact_all(reqs)
    except TimeoutError as exc:
        assert "MEM_READ" in str(exc), f"the timeout names another request: {exc}"
    else:
        raise AssertionError("a batch with a read during seeding finished within 50 cycles")
    assert bytes(console) == b"ok", f"console before the timed-out request: {bytes(console)!r}"
    await ep.reset()
    await enable(host)
    await host.io_write_each(DEBUGCON_PORT, b"again")
    await ep.drain_console()
    assert bytes(console) == b"okagain", f"console after the reset: {bytes(console)!r}"


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def lean_batch_leaves_due_triggers_to_cocotb(dut: SimHandleBase) -> None:
    """A `Timer` due in the middle of a batch fires at its cycle (the main loop leaves the
    request then in flight to cocotb), the batch's results are unchanged, and with no
    trigger pending the rest of it and later batches are served directly again."""
    console = bytearray()
    ep = LockstepEndpoint(dut, console_sink=console.extend)
    await ep.start()
    host = Host(ep)
    await enable(host)
    fired: list[int] = []

    async def tick(cycles: int) -> None:
        await Timer(cycles * ep.period_ns, "ns")
        fired.append(ep.cycle())

    text = bytes(range(3 * RING)) + b"end"
    start = ep.cycle()
    cocotb.start_soon(tick(40))
    await Timer(ep.period_ns, "ns")  # let the task start and register its timer
    served = ep.direct_steps
    await host.io_write_each(DEBUGCON_PORT, text)
    took = ep.cycle() - start
    assert took > 40, f"the batch took {took} cycles; the case needs more than 40"
    assert fired == [start + 40], f"timer due at cycle {start + 40} fired at {fired}"
    assert bytes(console) == text, f"console {bytes(console)!r}"
    direct = cocotb.SIM_NAME.lower().startswith("verilator")
    if direct:
        left = len(text) - (ep.direct_steps - served)
        assert left == 1, f"{left} requests of the batch left to cocotb, expected the one " \
                          "in flight when the timer was due"
    served = ep.direct_steps
    await host.io_write_each(DEBUGCON_PORT, b"more")
    assert bytes(console) == text + b"more", f"console {bytes(console)!r}"
    assert ep.direct_steps - served == (4 if direct else 0), "later batch not served directly"


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def lean_stream_equals_batch(dut: SimHandleBase) -> None:
    """`io_write_stream` (Verilator: `cosim_lockstep_stream` builds the requests in C++)
    against `transact_all` of `stream_requests`, the same requests as objects, from the
    same state: the same completions (tags included), console bytes and cycle of every
    request; also for an unclaimed port (UR) and across the tag wrap.  A stream whose
    writes cannot be done in time raises TimeoutError naming the first one."""
    text = bytes(range(256)) + b"wrap" + bytes(3 * RING)
    for port in (DEBUGCON_PORT, DEBUGCON_PORT + 4):
        runs = []
        for stream in (True, False):
            console = bytearray()
            ep = LockstepEndpoint(dut, console_sink=console.extend)
            await ep.start()
            await enable(Host(ep))
            start = ep.cycle()
            if stream:
                got = await ep.io_write_stream(port, text, 200)
                cpls = [got.completion(i) for i in range(len(got))]
            else:
                cpls = await ep.transact_all(stream_requests(port, text, 200))
            await ep.drain_console()
            cycles = [int(m[:-2]) // ep.period_ns - start for m in ep.batch_stamps()]
            runs.append((cpls, bytes(console), cycles))
        (s_cpls, s_con, s_cyc), (b_cpls, b_con, b_cyc) = runs
        assert s_cpls == b_cpls, f"port {port:#x}: stream completions differ: " + "; ".join(
            f"#{i}: {a} != {b}" for i, (a, b) in enumerate(zip(s_cpls, b_cpls, strict=True))
            if a != b)[:400]
        assert s_con == b_con, f"port {port:#x}: stream console {s_con[:40]!r}..."
        assert s_con == (text if port == DEBUGCON_PORT else b""), f"console {s_con[:40]!r}"
        assert s_cyc == b_cyc, f"port {port:#x}: cycles {s_cyc[:8]}... vs {b_cyc[:8]}..."
    ep = LockstepEndpoint(dut, timeout_cycles=3)  # an I/O write needs more cycles
    await ep.start()
    try:
        await ep.io_write_stream(DEBUGCON_PORT, b"late", 7)
    except TimeoutError as exc:
        assert "IO_WRITE tag=7 " in str(exc), f"the timeout names another request: {exc}"
    else:
        raise AssertionError("a stream finished although its writes need more than 3 cycles")
