"""DMA scenarios shared by the testbench's DMA cases (`tb.cases_dma`, cocotb on Icarus and
Verilator) and the RTL unit test (tests/test_rtl_dma.py, Amaranth's simulator): one
register program per case, run the same way on any `Endpoint` -- the RTL or the golden
model -- each with its own host memory (`models.host_memory.HostMemory`), and the checks
of what reached the host against glibc's numbers (the oracle) and the buffer's bounds.
Pure Python: no cocotb, no pyuvm.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.contract.regmap import (
    BAR0_TEST_BASE,
    COMMAND_INTX_DISABLE,
    COMMAND_MASTER,
    COMMAND_MEMORY,
    DMA_CTRL_IRQ_EN,
    DMA_CTRL_START,
    DMA_MAX_LEN,
    DMA_STATUS_BUSY,
    INT_STATUS_DMA,
    MSI_CAP,
    MSI_CONTROL_ENABLE,
    RNG_REGISTERS,
)
from models.contract.transaction import Endpoint, Host
from models.glibc_oracle import glibc_sequence
from models.host_memory import HostMemory

__all__ = ["BAR", "CASES", "FILL", "MSI_ADDR", "MSI_DATA", "RAM", "RAM_SIZE", "REG", "WRITING",
           "Case", "DmaMismatch", "Run", "buffer", "check_oracle", "compare", "glibc_bytes",
           "program", "untouched_outside"]

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


def buffer(run: Run, addr: int, length: int) -> bytes:
    mem = run.mem.regions[RAM]
    return bytes(mem[addr - RAM:addr - RAM + length])


def glibc_bytes(seed: int, length: int, skip: int = 0) -> bytes:
    numbers = glibc_sequence(seed, skip + -(-length // 4))[skip:]
    return b"".join(n.to_bytes(4, "little") for n in numbers)[:length]


class DmaMismatch(AssertionError):
    """The RTL and the model did different things to the host, or to the registers."""


def compare(rtl: Run, model: Run, what: str) -> None:
    """Raise `DmaMismatch` at the first difference between the two runs of a case."""
    for i, (a, b) in enumerate(zip(rtl.mem.events, model.mem.events, strict=False)):
        if a != b:
            raise DmaMismatch(f"{what}: host event {i}: RTL {a} != model {b}")
    if len(rtl.mem.events) != len(model.mem.events):
        raise DmaMismatch(f"{what}: RTL made {len(rtl.mem.events)} host events, the model "
                          f"{len(model.mem.events)}")
    if rtl.mem.regions[RAM] != model.mem.regions[RAM]:
        raise DmaMismatch(f"{what}: host memory differs")
    if rtl.regs != model.regs:
        raise DmaMismatch(f"{what}: registers: RTL {rtl.regs} != model {model.regs}")
    if rtl.after != model.after:
        raise DmaMismatch(f"{what}: RNG after the transfer: RTL {rtl.after} != "
                          f"model {model.after}")


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
    "msi_master_off": Case(RAM + 0x100, 32, command=COMMAND_MEMORY, msi=True),
    "intx_disabled": Case(RAM + 0x100, 32, command=COMMAND_MEMORY | COMMAND_MASTER
                          | COMMAND_INTX_DISABLE),
    "no_irq": Case(RAM + 0x100, 32, ctrl=DMA_CTRL_START),
    "start_while_busy": Case(RAM + 0x100, 40, second_start=True, stall=0.3),
    "seed_while_busy": Case(RAM + 0x100, 40, seed_during=12345, stall=0.3),
}


# The cases whose buffer must hold glibc's stream from the seed (the others write nothing,
# stop early, or re-seed).
WRITING = ("aligned_64B", "unaligned_length_7", "crosses_4k", "two_pages_backpressure",
           "msi", "intx_disabled", "no_irq", "start_while_busy", "seed_while_busy")


def check_oracle(name: str, run: Run) -> None:
    """The buffer of a writing case against glibc's numbers, and nothing written outside
    the buffer(s); raises `DmaMismatch`."""
    case = CASES[name]
    spans = [(case.addr, case.length, 0)]
    if case.second_start:
        spans.append((case.addr + case.length + 4 & ~3, case.length, -(-case.length // 4)))
    for addr, length, skip in spans:
        got = buffer(run, addr, length)
        want = glibc_bytes(case.seed, length, skip)
        if got != want:
            first = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
            raise DmaMismatch(f"{name}: buffer byte {first} at {addr + first:#x} is "
                              f"{got[first]:#04x}, glibc's stream says {want[first]:#04x}")
    mem = run.mem.regions[RAM]
    inside = set()
    for addr, length, _ in spans:
        inside.update(range(addr - RAM, addr - RAM + length))
    outside = [i for i in range(len(mem)) if i not in inside and mem[i] != FILL]
    if outside:
        raise DmaMismatch(f"{name}: the device wrote outside the buffer at "
                          f"{RAM + outside[0]:#x} ({len(outside)} bytes)")
