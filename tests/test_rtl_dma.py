"""The DMA engine and the interrupt, RTL (Amaranth's simulator) against the golden model and
glibc: every case runs the same register program on both, each with its own host memory,
then compares what reached the host (writes, flush reads, MSI, INTx changes, in order),
the registers, and the buffer against glibc's numbers (the oracle), with nothing written
outside the buffer.  Timing is varied on the requester side (back-pressure on `mreq`,
completion latency on `mcpl`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from amaranth.sim import SimulatorContext

from models.contract.regmap import (
    BAR0_TEST_BASE,
    COMMAND_INTX_DISABLE,
    COMMAND_MASTER,
    COMMAND_MEMORY,
    DMA_CTRL_IRQ_EN,
    DMA_CTRL_START,
    DMA_MAX_LEN,
    DMA_STATUS_BUSY,
    DMA_STATUS_DONE,
    DMA_STATUS_ERROR,
    INT_STATUS_DMA,
    MSI_CAP,
    MSI_CONTROL_ENABLE,
    RNG_REGISTERS,
    STATUS_INTERRUPT,
)
from models.contract.transaction import Endpoint, Host
from models.device import Device
from models.glibc_oracle import glibc_sequence
from models.host_memory import HostMemory
from rtl.top import Top
from tests.rtl_harness import ConsoleSink, MasterPort, SimEndpoint, run_top

BAR = BAR0_TEST_BASE
REG = {r.name: BAR + r.offset for r in RNG_REGISTERS}
RAM = 0x10_0000  # host RAM of the cases: 3 pages, filled with FILL
RAM_SIZE = 0x3000
FILL = 0xA5
MSI_ADDR, MSI_DATA = 0xFEE0_1000, 0x4041


@dataclass(frozen=True)
class Case:
    addr: int
    length: int
    command: int = COMMAND_MEMORY | COMMAND_MASTER
    ctrl: int = DMA_CTRL_START | DMA_CTRL_IRQ_EN
    msi: bool = False
    seed: int = 7
    stall: float = 0.0
    latency: int = 0
    second_start: bool = False  # a START while the first is still busy (posted, back to back)
    seed_during: int | None = None  # a SEED write right after START


class Run:
    def __init__(self) -> None:
        self.mem = HostMemory()
        self.mem.add_region(RAM, RAM_SIZE, FILL)
        self.regs: dict[str, int] = {}
        self.after: list[int] = []  # RNG reads after the program
        self.busy_seen = False


async def program(endpoint: Endpoint, case: Case, run: Run) -> None:
    host = Host(endpoint)
    await host.cfg_write(0x10, BAR)
    await host.cfg_write(0x04, case.command, 2)
    if case.msi:
        await host.cfg_write(MSI_CAP + 4, MSI_ADDR)
        await host.cfg_write(MSI_CAP + 8, 0)
        await host.cfg_write(MSI_CAP + 0xC, MSI_DATA)
        await host.cfg_write(MSI_CAP, MSI_CONTROL_ENABLE)
    await host.mem_write(REG["SEED"], case.seed)
    await host.mem_write(REG["DMA_ADDR"], case.addr, 8)
    await host.mem_write(REG["DMA_LEN"], case.length)
    await host.mem_write(REG["DMA_CTRL"], case.ctrl)
    if case.second_start:
        await host.mem_write(REG["DMA_ADDR"], case.addr + case.length + 4 & ~3, 8)
        await host.mem_write(REG["DMA_CTRL"], case.ctrl)
    if case.seed_during is not None:
        await host.mem_write(REG["SEED"], case.seed_during)
    for _ in range(20000):  # the model is never busy; the RTL is for a few hundred cycles
        status = await host.mem_read(REG["DMA_STATUS"])
        if not status & DMA_STATUS_BUSY:
            break
        run.busy_seen = True
    else:
        raise TimeoutError("DMA_STATUS stayed BUSY")
    for name in ("DMA_STATUS", "INT_STATUS", "DMA_CTRL", "DMA_LEN"):
        run.regs[name] = await host.mem_read(REG[name])
    run.regs["STATUS"] = await host.cfg_read(0x04) >> 16 << 16
    run.after = [await host.mem_read(REG["RNG"]) for _ in range(2)]
    await host.mem_write(REG["INT_STATUS"], INT_STATUS_DMA)
    run.regs["INT_STATUS_CLEARED"] = await host.mem_read(REG["INT_STATUS"])


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


def buffer(run: Run, addr: int, length: int) -> bytes:
    mem = run.mem.regions[RAM]
    return bytes(mem[addr - RAM:addr - RAM + length])


def glibc_bytes(seed: int, length: int, skip: int = 0) -> bytes:
    numbers = glibc_sequence(seed, skip + -(-length // 4))[skip:]
    return b"".join(n.to_bytes(4, "little") for n in numbers)[:length]


def check_same(case: Case) -> tuple[Run, Run]:
    rtl, model = on_rtl(case), on_model(case)
    assert rtl.mem.events == model.mem.events, (
        f"host saw different device activity:\n RTL   {rtl.mem.events[:8]}...\n "
        f"model {model.mem.events[:8]}...")
    assert rtl.mem.regions[RAM] == model.mem.regions[RAM], "host memory differs"
    assert rtl.regs == model.regs, f"registers: RTL {rtl.regs} != model {model.regs}"
    assert rtl.after == model.after, f"RNG after the transfer: {rtl.after} != {model.after}"
    return rtl, model


def untouched_outside(run: Run, addr: int, length: int) -> None:
    mem = run.mem.regions[RAM]
    lo, hi = addr - RAM, addr - RAM + length
    outside = bytes(mem[:max(lo, 0)]) + bytes(mem[max(hi, 0):])
    assert outside == bytes([FILL]) * len(outside), "the device wrote outside the buffer"


CASES: dict[str, Case] = {
    "aligned_64B": Case(RAM + 0x100, 64),
    "unaligned_length_7": Case(RAM + 0x200, 7),
    "crosses_4k": Case(RAM + 0xFF8, 24),
    "two_pages_backpressure": Case(RAM + 0x800, 0x1200, stall=0.5, latency=7),
    "zero_length": Case(RAM + 0x100, 0),
    "too_long": Case(RAM + 0x100, DMA_MAX_LEN + 1),
    "bus_master_off": Case(RAM + 0x100, 64, command=COMMAND_MEMORY),
    "msi": Case(RAM + 0x100, 32, msi=True),
    "intx_disabled": Case(RAM + 0x100, 32, command=COMMAND_MEMORY | COMMAND_MASTER
                          | COMMAND_INTX_DISABLE),
    "no_irq": Case(RAM + 0x100, 32, ctrl=DMA_CTRL_START),
    "start_while_busy": Case(RAM + 0x100, 40, second_start=True, stall=0.3),
    "seed_while_busy": Case(RAM + 0x100, 40, seed_during=12345, stall=0.3),
}


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


