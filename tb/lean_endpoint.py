"""The RTL as an `Endpoint` through the lean wrapper (`tb.lean_wrapper`): the bridge's path.

    ep = LeanRtlEndpoint(dut, console_sink=...)   # dut: the `cosim_lean` toplevel
    await ep.start()                                # reset
    cpl = await ep.transact(Request(...))

One request at a time, lock-step, as the QEMU bridge serves them.  A transaction is three
Python <-> simulator crossings: one write of the packed request (which toggles its `seq`
bit), one wait for `done` to toggle, one read of the packed response; the stream
handshakes, the clock and the timeout watchdog run in HDL.  The testbench keeps the
pyuvm-grade `tb.rtl_endpoint.RtlEndpoint` (idle and back-pressure patterns, pipelining,
monitors); this class is what the bridge and the speed bench need, and it is checked
against the models like the full one (`tb/lean_check.py`).

Signals are accessed through cocotb's GPI object (`handle._handle`) with plain ints and
binary strings: the public `.value` API converts through `LogicArray` and schedules
writes, which was most of the Python time per transaction (bench/README.md, py-spy).
Writes are immediate: they happen right after `done` toggled on a rising edge (or at a
falling edge), so they are sampled at the next rising edge without a race.

Errors are loud: a request not done within `timeout_cycles` raises `TimeoutError`, a
completion with another tag `RuntimeError`, an X/Z on the response `ValueError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cocotb.handle import SimHandleBase
from cocotb.simtime import get_sim_time
from cocotb.triggers import Timer

from models.transaction import Completion, Request, Status
from tb.lean_wrapper import REQ_LAYOUT, RING, RSP_LAYOUT, SETTLE

__all__ = ["LeanRtlEndpoint"]

log = logging.getLogger("cosim.tb.lean")

_DEPOSIT_NO_DELAY = 3  # cocotb.handle._GPISetAction.NO_DELAY: write now, not at ReadWrite
_COUNT_MASK = (1 << RSP_LAYOUT.fields[1][1]) - 1
_CON_WR_LO = RSP_LAYOUT.offset("con_wr")
_TIMED_OUT = RSP_LAYOUT.offset("timed_out")


class LeanRtlEndpoint:
    """`cosim_lean` as an `Endpoint`; see the module docstring."""

    def __init__(
        self,
        dut: SimHandleBase,
        console_sink: Callable[[bytes], None] | None = None,
        *,
        period_ns: int = 10,
        timeout_cycles: int = 100_000,
        reset_cycles: int = 4,
    ) -> None:
        if timeout_cycles <= 0 or timeout_cycles >= 1 << 32:
            raise ValueError(
                f"Timeout must be a positive 32-bit cycle count, not {timeout_cycles!r}")
        if reset_cycles <= 0:
            raise ValueError(f"Reset must last at least one cycle, not {reset_cycles!r}")
        self.dut = dut
        self.period_ns = period_ns  # must match the wrapper's generated clock
        self.timeout_cycles = timeout_cycles
        self.reset_cycles = reset_cycles
        self.errors: list[str] = []  # the full endpoint's API; lean errors raise instead
        self._console_sink = console_sink
        self._req = dut.req._handle
        self._rsp = dut.rsp._handle
        self._ring = dut.con_ring._handle
        self._con_rd_h = dut.con_rd._handle
        self._done = dut.done.value_change
        self._req_width = REQ_LAYOUT.width
        self._seq = 0
        self._con_rd = 0
        self.started = False
        self.transactions = 0

    async def start(self) -> None:
        """Set the wrapper's inputs and apply a reset (the clock runs in the wrapper)."""
        if self.started:
            raise RuntimeError("LeanRtlEndpoint.start() called twice")
        self.dut.rst._handle.set_signal_val_int(_DEPOSIT_NO_DELAY, 1)
        # The ring's write count lives in the wrapper (it may have served an endpoint
        # before, e.g. an earlier test in the same simulation): start from where it is.
        await self._to_falling_edge()
        self._con_rd = (int(self._rsp.get_signal_val_binstr(), 2) >> _CON_WR_LO) & _COUNT_MASK
        self.started = True
        log.info("lean RTL endpoint: period %d ns, timeout %d cycles",
                 self.period_ns, self.timeout_cycles)
        await self.reset()

    def stop(self) -> None:
        """Nothing runs in Python between transactions: the full endpoint's API only."""

    def cycle(self) -> int:
        return int(get_sim_time("ns") // self.period_ns)

    async def transact(self, req: Request) -> Completion | None:
        if not self.started:
            raise RuntimeError("LeanRtlEndpoint used before start()")
        self._seq ^= 1
        vec = (self._seq << (self._req_width - 1)) | REQ_LAYOUT.pack(
            seq=0, kind=req.kind, tag=req.tag, addr=req.addr, be=req.be, data=req.data
        )
        self._req.set_signal_val_binstr(_DEPOSIT_NO_DELAY, format(vec, f"0{self._req_width}b"))
        await self._done
        self.transactions += 1
        rsp = int(self._rsp.get_signal_val_binstr(), 2)  # X/Z: ValueError, loud
        con_wr = (rsp >> _CON_WR_LO) & _COUNT_MASK
        if con_wr != self._con_rd:
            self._drain(con_wr)
        if rsp >> _TIMED_OUT & 1:
            raise TimeoutError(f"{req} not done within {self.timeout_cycles} cycles")
        if req.kind.posted:
            return None
        fields = RSP_LAYOUT.unpack(rsp)
        if fields["tag"] != req.tag:
            raise RuntimeError(f"completion tag {fields['tag']} for {req}")
        return Completion(fields["tag"], Status(fields["status"]), fields["data"])

    def _drain(self, con_wr: int) -> None:
        """Hand the console bytes in the ring to the sink, oldest first; free the ring."""
        used = (con_wr - self._con_rd) & _COUNT_MASK
        if used > RING:
            raise RuntimeError(f"console ring overrun: {used} bytes for a ring of {RING}")
        ring = int(self._ring.get_signal_val_binstr(), 2)
        data = bytes((ring >> (8 * ((self._con_rd + i) % RING))) & 0xFF for i in range(used))
        self._con_rd = con_wr
        self._con_rd_h.set_signal_val_int(_DEPOSIT_NO_DELAY, con_wr)
        if self._console_sink is not None:
            self._console_sink(data)

    async def drain_console(self) -> None:
        """Let console bytes in flight reach the ring, then hand them to the sink.

        Call at the end of a run and before a reset.  The RTL FIFO (16 bytes) offers a byte
        two cycles after the write that queued it and then one per cycle, so one wait of
        `SETTLE + 2 + RING` cycles lets everything that can arrive arrive; the loop covers
        a ring that filled meanwhile."""
        await self._to_falling_edge()
        for _ in range(4):
            await Timer((SETTLE + 2 + RING) * self.period_ns, "ns")
            con_wr = (int(self._rsp.get_signal_val_binstr(), 2) >> _CON_WR_LO) & _COUNT_MASK
            if con_wr == self._con_rd:
                return
            self._drain(con_wr)
        raise RuntimeError("console bytes keep coming with no request outstanding")

    async def _to_falling_edge(self) -> None:
        """Wait until the next falling edge (multiples of the period; rising edges are at
        half periods): writes and reads there never race with the wrapper's always block."""
        step_ps = self.period_ns * 1000
        now = int(get_sim_time("ps"))
        wait = step_ps - now % step_ps
        await Timer(wait, "ps")

    async def reset(self) -> None:
        """`rst` high for `reset_cycles` cycles, changed on falling edges; console bytes
        written before the reset reach the sink first (the reset empties the RTL FIFO)."""
        await self.drain_console()
        self.dut.rst._handle.set_signal_val_int(_DEPOSIT_NO_DELAY, 1)
        # The wrapper's inputs, (re)written here: Icarus drops writes made at time 0.
        self._req.set_signal_val_binstr(
            _DEPOSIT_NO_DELAY, format(self._seq << (self._req_width - 1), f"0{self._req_width}b"))
        self.dut.timeout._handle.set_signal_val_int(_DEPOSIT_NO_DELAY, self.timeout_cycles)
        self._con_rd_h.set_signal_val_int(_DEPOSIT_NO_DELAY, self._con_rd)
        await Timer(self.reset_cycles * self.period_ns, "ns")
        self.dut.rst._handle.set_signal_val_int(_DEPOSIT_NO_DELAY, 0)
        log.debug("reset done at %s ns", get_sim_time("ns"))
