"""The DMA engine and the interrupt, RTL (Amaranth's simulator) against the golden model and
glibc: every case runs the same register program on both, each with its own host memory,
then compares what reached the host (writes, flush reads, MSI, INTx changes, in order),
the registers, and the buffer against glibc's numbers (the oracle), with nothing written
outside the buffer.  Timing is varied on the requester side (back-pressure on `mreq`,
completion latency on `mcpl`).
"""

from __future__ import annotations

import asyncio

import pytest
from amaranth.sim import SimulatorContext

from models.contract.regmap import (
    DMA_STATUS_DONE,
    DMA_STATUS_ERROR,
    INT_STATUS_DMA,
    STATUS_INTERRUPT,
)
from models.device import Device
from models.glibc_oracle import glibc_sequence
from rtl.top import Top
from tb.dma_program import (
    CASES,
    FILL,
    MSI_ADDR,
    MSI_DATA,
    RAM,
    RAM_SIZE,
    Case,
    Run,
    buffer,
    compare,
    glibc_bytes,
    program,
    untouched_outside,
)
from tests.rtl_harness import ConsoleSink, MasterPort, SimEndpoint, run_top


def on_rtl(case: Case) -> Run:
    run = Run()

    async def body(ctx: SimulatorContext, top: Top, sink: ConsoleSink) -> None:
        await program(SimEndpoint(ctx, top, timeout=20000), case, run)
        for _ in range(4):  # let the INTx change after the last write reach the port
            await ctx.tick()

    run_top(body, master=lambda top: MasterPort(top, run.mem, stall=case.stall,
                                                latency=case.latency))
    return run


def on_model(case: Case) -> Run:
    run = Run()
    asyncio.run(program(Device(host=run.mem), case, run))
    return run


def check_same(case: Case) -> tuple[Run, Run]:
    rtl, model = on_rtl(case), on_model(case)
    compare(rtl, model, "RTL against model")
    return rtl, model




@pytest.mark.parametrize("name", CASES)
def test_dma_rtl_equals_model(name: str) -> None:
    check_same(CASES[name])


def test_dma_writes_glibcs_numbers_in_order_and_nothing_outside() -> None:
    case = CASES["two_pages_backpressure"]
    rtl, _ = check_same(case)
    assert rtl.busy_seen, "the RTL transfer was never seen BUSY: the poll tested nothing"
    assert buffer(rtl, case.addr, case.length) == glibc_bytes(case.seed, case.length)
    untouched_outside(rtl, case.addr, case.length)
    assert rtl.regs["DMA_STATUS"] == DMA_STATUS_DONE
    flushes = [e.addr for e in rtl.mem.of_kind("read")]
    assert flushes == [RAM + 0xFFC, case.addr + case.length - 4], (
        f"flush reads at {[hex(a) for a in flushes]}: one per page's last DW expected")
    assert rtl.after == glibc_sequence(case.seed, case.length // 4 + 2)[-2:], (
        "RNG reads after the transfer do not continue glibc's stream")


def test_unaligned_length_writes_only_its_bytes_and_consumes_the_number() -> None:
    case = CASES["unaligned_length_7"]
    rtl, _ = check_same(case)
    assert buffer(rtl, case.addr, 8) == glibc_bytes(case.seed, 7) + bytes([FILL])
    assert rtl.after == glibc_sequence(case.seed, 4)[2:]


@pytest.mark.parametrize("name", ["zero_length", "too_long", "bus_master_off"])
def test_transfers_that_write_nothing(name: str) -> None:
    case = CASES[name]
    rtl, _ = check_same(case)
    assert not rtl.mem.of_kind("write", "read", "refused_write", "refused_read")
    want = DMA_STATUS_DONE if name == "zero_length" else DMA_STATUS_ERROR
    assert rtl.regs["DMA_STATUS"] == want, f"DMA_STATUS {rtl.regs['DMA_STATUS']:#x}"
    assert rtl.regs["INT_STATUS"] == INT_STATUS_DMA  # IRQ_EN: it ended, so it interrupts


def test_a_refused_page_ends_the_transfer_with_error() -> None:
    case = Case(RAM + RAM_SIZE - 0x10, 0x40)  # the second page is not host memory
    rtl, _ = check_same(case)
    assert rtl.regs["DMA_STATUS"] == DMA_STATUS_ERROR
    assert len(rtl.mem.of_kind("refused_read")) == 1
    assert [e.addr for e in rtl.mem.of_kind("write")] == [RAM + RAM_SIZE - 0x10 + 4 * i
                                                          for i in range(4)]


def test_intx_follows_int_status_and_shows_in_status() -> None:
    rtl, _ = check_same(CASES["aligned_64B"])
    assert [e.data for e in rtl.mem.of_kind("intx")] == [1, 0], "INTx did not rise then fall"
    assert rtl.regs["STATUS"] & STATUS_INTERRUPT and rtl.regs["INT_STATUS_CLEARED"] == 0


def test_intx_disable_keeps_the_wire_low_but_the_status_set() -> None:
    rtl, _ = check_same(CASES["intx_disabled"])
    assert not rtl.mem.of_kind("intx") and rtl.regs["STATUS"] & STATUS_INTERRUPT


def test_msi_is_one_message_write_and_no_intx() -> None:
    rtl, _ = check_same(CASES["msi"])
    msi = rtl.mem.of_kind("msi")
    assert [(e.addr, e.data) for e in msi] == [(MSI_ADDR, MSI_DATA)], f"MSI: {msi}"
    assert rtl.mem.events[-1].kind == "msi", "the MSI did not come after the transfer's writes"
    assert not rtl.mem.of_kind("intx") and not rtl.regs["STATUS"] & STATUS_INTERRUPT


def test_start_while_busy_starts_the_next_transfer_after() -> None:
    case = CASES["start_while_busy"]
    rtl, _ = check_same(case)
    second = case.addr + case.length + 4 & ~3
    assert buffer(rtl, case.addr, case.length) == glibc_bytes(case.seed, case.length)
    assert buffer(rtl, second, case.length) == glibc_bytes(case.seed, case.length,
                                                           skip=case.length // 4)


def test_seed_while_busy_waits_for_the_transfer() -> None:
    case = CASES["seed_while_busy"]
    rtl, _ = check_same(case)
    assert buffer(rtl, case.addr, case.length) == glibc_bytes(case.seed, case.length)
    assert rtl.after == glibc_sequence(12345, 2), "the SEED did not take effect after"


