"""QEMU's debugcon (isa-debugcon): a one-byte I/O port at 0xe9 with an output byte stream.

The top routes I/O accesses of the DW at 0xe8 with byte lane 1 enabled here.  A write
queues its lane-1 byte in a FIFO whose output is the `con` stream; when the FIFO is full
the write is not acknowledged until there is room, so the I/O write completes late and
no byte is ever dropped or reordered.  A read returns 0xe9 in lane 1 (QEMU's detection
value), the other lanes 0.

Ref: QEMU hw/char/debugcon.c (read returns the readback value 0xe9).
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from models.contract.regmap import DEBUGCON_PORT, DEBUGCON_READ_VALUE
from rtl.transaction import AccessSignature, ByteStreamSignature

__all__ = ["Peripheral"]

LANE = DEBUGCON_PORT & 3  # port 0xe9 is byte lane 1 of the I/O DW at 0xe8
DEPTH = 16  # bytes the FIFO holds (its output register included) before writes wait


class Peripheral(wiring.Component):
    """The debugcon port.

    Members
    -------
    bus : In(AccessSignature(0))
        Accesses to port 0xe9 (already decoded by the top).  A read `ack`s in its strobe
        cycle; a write `ack`s in the first cycle where the FIFO has room, and its byte
        enters the FIFO on the rising edge ending that cycle.
    con : Out(ByteStreamSignature())
        The bytes written, in order; a byte is offered at the earliest two cycles after
        its write was acknowledged (the FIFO's output register).
    """

    def __init__(self, depth: int = DEPTH) -> None:
        if not isinstance(depth, int) or depth < 2:
            raise TypeError(f"FIFO depth must be an integer of at least 2, not {depth!r}")
        self.depth = depth
        super().__init__({"bus": In(AccessSignature(0)), "con": Out(ByteStreamSignature())})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        bus = self.bus
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=self.depth)

        m.d.comb += [
            # A write waits for room in the FIFO: never drop a byte.
            bus.ack.eq(bus.stb & (~bus.we | fifo.w_rdy)),
            fifo.w_en.eq(bus.stb & bus.we & fifo.w_rdy),
            fifo.w_data.eq(bus.w_data.word_select(LANE, 8)),
            bus.r_data.eq(DEBUGCON_READ_VALUE << (8 * LANE)),
            self.con.valid.eq(fifo.r_rdy),
            self.con.data.eq(fifo.r_data),
            fifo.r_en.eq(self.con.ready),
        ]
        return m
