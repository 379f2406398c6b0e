"""cocotb tests of the DMA engine and the interrupt, on Icarus and Verilator.

Every scenario of `tb.dma_program` runs on the RTL -- its requests served by the
`HostMemoryAgent` under back-pressure on `mreq` and latency on `mcpl` -- and on the golden
model, each with its own host memory; the first difference in what reached the host, the
registers or the stream after the transfer fails the case at once, and every writing
case's buffer is checked against glibc's numbers with nothing written outside it.  A
reset in the middle of a transfer: the writes before it are a prefix of glibc's stream in
the buffer, nothing comes after it, and the device reads back as reset.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import cocotb
from cocotb.handle import SimHandleBase
from cocotb.triggers import ClockCycles

from models.contract.regmap import COMMAND_MASTER, COMMAND_MEMORY, DMA_CTRL_START
from models.contract.transaction import Host, Kind
from models.device import Device
from models.glibc_oracle import glibc_sequence
from models.host_memory import HostMemory
from tb.coverage import CoverageDb
from tb.dma_program import (
    BAR,
    CASES,
    RAM,
    RAM_SIZE,
    REG,
    WRITING,
    Case,
    DmaMismatch,
    Run,
    check_oracle,
    compare,
    program,
)
from tb.reset_check import check_reset_state
from tb.rtl_endpoint import RtlEndpoint
from tb.timing import make_pattern

SIM_TIME_LIMIT_MS = 20

# Requester-side timings: (mreq back-pressure, mcpl latency) pattern names.
TIMINGS = {"no_stall": (None, None), "mreq_backpressure": ("random", None),
           "mcpl_latency": (None, "bursty"), "both": ("bursty", "random")}


def _model_run(case: Case) -> Run:
    run = Run()
    coro = program(Device(host=run.mem), case, run)
    try:
        coro.send(None)  # the model never waits: the program runs to its end at once
    except StopIteration:
        return run
    raise RuntimeError("the model's DMA program awaited something")


async def _rtl_run(ep: RtlEndpoint, case: Case) -> Run:
    await ep.reset()
    run = Run()
    ep.master.host = run.mem
    await program(ep, case, run)
    await ClockCycles(ep.dut.clk, 4)  # the INTx change after the last access
    return run


def _save(db: CoverageDb, test: str) -> None:
    out = os.environ.get("COSIM_COVERAGE_DIR")
    if out:
        db.save(Path(out) / f"{test}.json")


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def dma_cases_match_model_and_glibc(dut: SimHandleBase) -> None:
    """Every DMA scenario under every requester-side timing: RTL == model, buffer == glibc."""
    db = CoverageDb()
    rnd = random.Random(random.getrandbits(64))  # from the run's seed (tb.seeding)
    ep = RtlEndpoint(dut, timeout_cycles=50_000)
    await ep.start()
    for timing, (bp, lat) in TIMINGS.items():
        ep.master.sink.backpressure = make_pattern(bp, rnd.getrandbits(32))
        ep.master.latency = make_pattern(lat, rnd.getrandbits(32))
        for name, case in CASES.items():
            rtl = await _rtl_run(ep, case)
            compare(rtl, _model_run(case), f"{name} ({timing})")
            if name in WRITING:
                check_oracle(name, rtl)
            db.hit("dma_case", name)
        db.hit("dma_timing", timing)
    refused = Case(RAM + RAM_SIZE - 0x10, 0x40)
    rtl = await _rtl_run(ep, refused)
    compare(rtl, _model_run(refused), "refused page")
    if not rtl.mem.of_kind("refused_read"):
        raise DmaMismatch("refused page: no refused flush read")
    db.hit("dma_case", "refused_page")
    ep.log_stimulus("dma_cases_match_model_and_glibc")
    _save(db, "dma_cases_match_model_and_glibc")
    assert not ep.errors, f"endpoint errors: {ep.errors}"


@cocotb.test(timeout_time=SIM_TIME_LIMIT_MS, timeout_unit="ms")
async def dma_reset_mid_transfer_stops_it(dut: SimHandleBase) -> None:
    """A reset while a transfer runs: what was written is glibc's stream from the buffer's
    start, nothing is written after the reset, and the device reads back as reset."""
    db = CoverageDb()
    ep = RtlEndpoint(dut, master_backpressure=make_pattern("alternate"))
    await ep.start()
    mem = HostMemory()
    mem.add_region(RAM, RAM_SIZE, 0xA5)
    ep.master.host = mem
    host = Host(ep)
    seed, length = 99, 0x1000
    await host.cfg_write(0x10, BAR)
    await host.cfg_write(0x04, COMMAND_MEMORY | COMMAND_MASTER, 2)
    await host.mem_write(REG["SEED"], seed)
    await host.mem_write(REG["DMA_ADDR"], RAM, 8)
    await host.mem_write(REG["DMA_LEN"], length)
    await host.mem_write(REG["DMA_CTRL"], DMA_CTRL_START)
    for _ in range(2000):
        if len(ep.master.requests) >= 100:
            break
        await ClockCycles(dut.clk, 1)
    else:
        raise DmaMismatch("the transfer did not start writing")
    await ep.reset()
    seen = len(ep.master.requests)
    await ClockCycles(dut.clk, 500)
    if len(ep.master.requests) != seen:
        raise DmaMismatch(f"{len(ep.master.requests) - seen} device requests after the reset")
    writes = [r for _, r in ep.master.requests if r.kind is Kind.MEM_WRITE]
    want = glibc_sequence(seed, len(writes))
    for i, req in enumerate(writes):
        if (req.addr, req.data) != (RAM + 4 * i, want[i]):
            raise DmaMismatch(f"write {i} before the reset: {req}, expected {want[i]:#x} "
                              f"at {RAM + 4 * i:#x}")
    if not 100 <= len(writes) < length // 4:
        raise DmaMismatch(f"{len(writes)} writes: the reset did not land mid-transfer")
    await check_reset_state(host, "after a reset mid-transfer")
    db.hit("dma_case", "reset_mid_transfer")
    ep.log_stimulus("dma_reset_mid_transfer_stops_it")
    _save(db, "dma_reset_mid_transfer_stops_it")


__all__: list[str] = []
