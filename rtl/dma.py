"""The RNG's DMA engine and the device's interrupt: BAR0 registers DMA_* and INT_STATUS.

A transfer (DMA_CTRL.START) copies DMA_ADDR, DMA_LEN and DMA_CTRL.IRQ_EN into working
registers, so software may change the registers meanwhile for the next one, and then:

```
IDLE --START--> checks: too long / past 2^64 / Bus Master off -> END(error); 0 -> END(done)
  WRITE: offer MEM_WRITE(addr, be, number) on `mreq`; on acceptance take the number
         -> more on this page: WRITE (back to back, one DW a cycle)
         -> last DW of the page or of the buffer: FLUSH
  FLUSH: offer MEM_READ(the DW just written) -> WAIT: completion on `mcpl`
         SC: more -> WRITE, else END(done);  UR, other status or timeout -> END(error)
  END: DMA_STATUS DONE or ERROR; with IRQ_EN, INT_STATUS.DMA is set and, if it was
       clear and MSI is enabled with Bus Master on, MSI: offer the message write -> IDLE
```

Bus Master Enable gates every request: it is checked before each request is offered, and
a request once offered stays offered until taken (the stream rule).  The flush read is
the ordering point (PCIe 4.0 2.4.1: a read completion may not pass posted writes), so a
page the host refused ends the transfer with ERROR.  Completions are waited for at most
`CPL_TIMEOUT` cycles (PCIe 4.0 2.8, completion timeout).  While the engine is not IDLE
`busy` holds SEED writes and reads of numbers in the RNG, and writes of DMA_CTRL and
INT_STATUS here (a START while busy starts the next transfer when this one ends), so the
stream, the transfers and the interrupt state do not depend on when host requests arrive;
the golden model (models/device.py) runs a transfer inside its START write and agrees.

The interrupt: INT_STATUS.DMA is the condition; with MSI enabled it is signalled by the
message, else on `intx` unless COMMAND.INTX_DISABLE; STATUS Interrupt Status shows it
while MSI is off (the INTx condition).

Ref: PCI Express Base Specification 4.0, 2.2.8.1 (INTx as a level), 2.4.1 (ordering),
2.8 (completion timeout), 6.1.4 (MSI is a memory write); PCI 3.0 6.2.2 (Bus Master,
Interrupt Disable), 6.8.1 (MSI).  Register semantics: models/contract/regmap.py.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from models.contract.regmap import (
    BAR0_SIZE,
    DMA_CTRL_IRQ_EN,
    DMA_CTRL_START,
    DMA_MAX_LEN,
    DMA_STATUS_BUSY,
    DMA_STATUS_DONE,
    DMA_STATUS_ERROR,
    INT_STATUS_DMA,
    RNG_REGISTERS,
)
from models.contract.transaction import Kind, Status
from rtl.transaction import AccessSignature, CompletionSignature, RequestSignature

__all__ = ["CPL_TIMEOUT", "Engine"]

_REG = {reg.name: reg.offset >> 2 for reg in RNG_REGISTERS}
CPL_TIMEOUT = 1 << 16  # cycles a flush read may take before the transfer ends with ERROR
_PAGE_DW_BITS = 10  # 4 KiB pages of 1024 DWs: the flush read's granule


class Engine(wiring.Component):
    """The DMA engine, its registers and the interrupt.

    Members
    -------
    bus : In(AccessSignature(log2(BAR0_SIZE)))
        Accesses of the DMA registers (offset inside BAR0).  Every access `ack`s in its
        strobe cycle, except writes of DMA_CTRL and INT_STATUS while `busy` (they wait).
    mreq : Out(RequestSignature())
        The device's requests (the engine is the initiator): MEM_WRITE of the buffer's
        DWs and of the MSI message, MEM_READ flushes; tag 0.
    mcpl : In(CompletionSignature())
        Completions of the flush reads; `ready` is high while one is awaited.
    number : In(31), number_ready : In(1), take : Out(1)
        The RNG's next number, whether it is ready, and the step that takes it (high in
        the cycle a buffer write is accepted).
    busy : Out(1)
        A transfer or its MSI is in progress (not IDLE): the RNG holds SEED writes and
        reads of numbers.  Also the top's `active`.
    master, intx_disable : In(1)
        COMMAND Bus Master Enable and Interrupt Disable.
    msi_enable : In(1), msi_address : In(64), msi_data : In(16)
        The MSI capability.
    interrupt : Out(1)
        The INTx condition (INT_STATUS set, MSI off), for STATUS Interrupt Status.
    intx : Out(1)
        The INTx wire: `interrupt` unless Interrupt Disable.
    """

    def __init__(self) -> None:
        super().__init__({
            "bus": In(AccessSignature((BAR0_SIZE - 1).bit_length())),
            "mreq": Out(RequestSignature()),
            "mcpl": In(CompletionSignature()),
            "number": In(31), "number_ready": In(1), "take": Out(1),
            "busy": Out(1),
            "master": In(1), "intx_disable": In(1),
            "msi_enable": In(1), "msi_address": In(64), "msi_data": In(16),
            "interrupt": Out(1), "intx": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        bus = self.bus
        reg = bus.addr[2:]
        lanes = Cat(bus.be[i].replicate(8) for i in range(4))

        # Software-visible registers.
        addr = Signal(64)  # bits 1:0 stay 0 (DW aligned)
        length = Signal(32)
        irq_en = Signal()
        done = Signal()
        error = Signal()
        int_status = Signal()

        # The running transfer.
        cur = Signal(62)  # DW address of the next write
        left = Signal(range(DMA_MAX_LEN + 1))  # bytes still to write
        t_irq = Signal()  # IRQ_EN of this transfer
        timer = Signal(range(CPL_TIMEOUT))

        wr = bus.stb & bus.we
        wr_int = wr & (reg == _REG["INT_STATUS"])
        wr_ctrl = wr & (reg == _REG["DMA_CTRL"])

        def merge(old: Signal, mask: int = 0xFFFF_FFFF) -> object:
            """`old` with this write's enabled bits (the `mask` of the register) taken."""
            keep = lanes & mask
            return (old & ~keep) | (bus.w_data & keep)

        m.d.comb += [
            bus.ack.eq(bus.stb & ~((wr_int | wr_ctrl) & self.busy)),
            self.interrupt.eq(int_status & ~self.msi_enable),
            self.intx.eq(int_status & ~self.msi_enable & ~self.intx_disable),
            self.mreq.tag.eq(0),
        ]
        with m.If(~bus.we):
            with m.Switch(reg):
                with m.Case(_REG["DMA_ADDR"]):
                    m.d.comb += bus.r_data.eq(addr[:32])
                with m.Case(_REG["DMA_ADDR"] + 1):
                    m.d.comb += bus.r_data.eq(addr[32:])
                with m.Case(_REG["DMA_LEN"]):
                    m.d.comb += bus.r_data.eq(length)
                with m.Case(_REG["DMA_CTRL"]):
                    m.d.comb += bus.r_data.eq(Mux(irq_en, DMA_CTRL_IRQ_EN, 0))
                with m.Case(_REG["DMA_STATUS"]):
                    m.d.comb += bus.r_data.eq(Cat(self.busy, done, error))
                with m.Case(_REG["INT_STATUS"]):
                    m.d.comb += bus.r_data.eq(int_status)
        assert (DMA_STATUS_BUSY, DMA_STATUS_DONE, DMA_STATUS_ERROR) == (1, 2, 4)
        assert INT_STATUS_DMA == 1

        with m.If(wr):
            with m.Switch(reg):
                with m.Case(_REG["DMA_ADDR"]):
                    m.d.sync += addr[:32].eq(merge(addr[:32], mask=0xFFFF_FFFC))
                with m.Case(_REG["DMA_ADDR"] + 1):
                    m.d.sync += addr[32:].eq(merge(addr[32:]))
                with m.Case(_REG["DMA_LEN"]):
                    m.d.sync += length.eq(merge(length))
                with m.Case(_REG["DMA_CTRL"]):
                    with m.If(bus.be[0] & ~self.busy):
                        m.d.sync += irq_en.eq(bus.w_data & DMA_CTRL_IRQ_EN != 0)
        start = wr_ctrl & bus.be[0] & (bus.w_data & DMA_CTRL_START != 0)
        # Write-1-to-clear, acknowledged only while idle; the engine's own set (END) is
        # never in the same cycle, as it is not idle then.
        with m.If(wr_int & ~self.busy & bus.be[0] & bus.w_data[0]):
            m.d.sync += int_status.eq(0)

        end_addr = Signal(65)
        m.d.comb += end_addr.eq(addr + length)
        last_dw = Signal()  # the DW offered now is the buffer's last
        page_end = Signal()  # ... or the last of its 4 KiB page
        m.d.comb += [last_dw.eq(left <= 4), page_end.eq(cur[:_PAGE_DW_BITS].all())]
        be_now = Mux(left >= 4, 0xF, (Const(1, 4) << left[:2]) - 1)

        ok = Signal()  # how END ends: DONE (1) or ERROR (0)
        offered = Signal()  # a buffer write is offered and not yet taken: keep offering it

        with m.FSM():
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [done.eq(0), error.eq(0),
                                 t_irq.eq(bus.w_data & DMA_CTRL_IRQ_EN != 0),  # this write's
                                 cur.eq(addr[2:]), left.eq(length[:left.shape().width])]
                    past_end = end_addr[64] & end_addr[:64].any()  # beyond the last byte
                    with m.If((length > DMA_MAX_LEN) | past_end | ~self.master):
                        m.d.sync += ok.eq(0)
                        m.next = "END"
                    with m.Elif(length == 0):
                        m.d.sync += ok.eq(1)
                        m.next = "END"
                    with m.Else():
                        m.next = "WRITE"
            with m.State("WRITE"):
                # One buffer DW a cycle while the host takes them; the number is the RNG's
                # next, taken on acceptance.  Bus Master is checked before each offer.
                m.d.comb += self.busy.eq(1)
                with m.If(~offered & ~self.master):
                    m.d.sync += ok.eq(0)
                    m.next = "END"
                with m.Elif(offered | self.number_ready):  # ready stays: no SEED while busy
                    m.d.sync += offered.eq(~self.mreq.ready)
                    m.d.comb += [
                        self.mreq.valid.eq(1), self.mreq.kind.eq(Kind.MEM_WRITE),
                        self.mreq.addr.eq(Cat(Const(0, 2), cur)), self.mreq.be.eq(be_now),
                        self.mreq.data.eq(self.number),
                    ]
                    with m.If(self.mreq.ready):
                        m.d.comb += self.take.eq(1)
                        with m.If(last_dw | page_end):
                            m.next = "FLUSH"  # `cur` stays: the flush reads this DW
                        with m.Else():
                            m.d.sync += [cur.eq(cur + 1), left.eq(left - 4)]
            with m.State("FLUSH"):
                # The ordering read of the DW just written: its completion says the page's
                # writes landed (or were refused).
                m.d.comb += [
                    self.busy.eq(1),
                    self.mreq.valid.eq(1), self.mreq.kind.eq(Kind.MEM_READ),
                    self.mreq.addr.eq(Cat(Const(0, 2), cur)), self.mreq.be.eq(0xF),
                ]
                with m.If(self.mreq.ready):
                    m.d.sync += timer.eq(CPL_TIMEOUT - 1)
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += [self.busy.eq(1), self.mcpl.ready.eq(1)]
                m.d.sync += timer.eq(timer - 1)
                with m.If(self.mcpl.valid):
                    with m.If((self.mcpl.status != Status.SC) | (self.mcpl.tag != 0)):
                        m.d.sync += ok.eq(0)
                        m.next = "END"
                    with m.Elif(last_dw):
                        m.d.sync += ok.eq(1)
                        m.next = "END"
                    with m.Else():
                        m.d.sync += [cur.eq(cur + 1), left.eq(left - 4)]
                        m.next = "WRITE"
                with m.Elif(timer == 0):
                    m.d.sync += ok.eq(0)
                    m.next = "END"
            with m.State("END"):
                # Status, then the interrupt condition and, on its rising edge with MSI, the
                # message.
                m.d.comb += self.busy.eq(1)
                m.d.sync += [done.eq(ok), error.eq(~ok)]
                with m.If(t_irq):
                    m.d.sync += int_status.eq(1)
                with m.If(t_irq & ~int_status & self.msi_enable & self.master):
                    m.next = "MSI"
                with m.Else():
                    m.next = "IDLE"
            with m.State("MSI"):
                m.d.comb += [
                    self.busy.eq(1),
                    self.mreq.valid.eq(1), self.mreq.kind.eq(Kind.MEM_WRITE),
                    self.mreq.addr.eq(Cat(Const(0, 2), self.msi_address[2:])),
                    self.mreq.be.eq(0xF), self.mreq.data.eq(self.msi_data),
                ]
                with m.If(self.mreq.ready):
                    m.next = "IDLE"
        return m
