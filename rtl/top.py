"""The device top: request decoder and completion generator around the three functions.

```
req -> [IDLE: latch] -> decode -+- CFG_*                      -> config.Header
                                +- MEM_* in BAR0, COMMAND.MEM -> 0x20-0x3f: dma.Engine
                                |                                else:      rng.Peripheral
                                +- IO_* DW 0xe8, be[1]        -> debugcon.Peripheral -> con
                                +- else: non-posted -> UR, posted -> dropped
       [BUSY: stb until ack] -> [RESPOND: cpl.valid until cpl.ready] -> cpl

dma.Engine (numbers from rng.Peripheral) -> mreq / mcpl (the device as bus master), intx
```

One request is in flight at a time: `req.ready` is high in IDLE, and in RESPOND on the
edge where the completion leaves (`cpl.ready`), so back-to-back requests take 2 cycles
each; the design is correct under any idle cycles on `req` and any back-pressure on `cpl`
and `con`.
MEM_WRITE is posted and never completes.  Completions echo the request's tag; a write's
completion carries data 0, an unsupported request's status UR and data 0.

Ref: PCI Express Base Specification 4.0, 2.3.1 (unsupported requests), 2.4.1 (posted
memory writes); docs/transactions.md.
"""


from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from models.contract.regmap import (
    BAR0_SIZE,
    COMMAND_INTX_DISABLE,
    COMMAND_MASTER,
    COMMAND_MEMORY,
    DEBUGCON_PORT,
    RNG_REGISTERS,
)
from models.contract.transaction import REQUEST_FIELDS, Kind, Status
from rtl import config, debugcon, dma, rng
from rtl.transaction import ByteStreamSignature, CompletionSignature, RequestSignature

__all__ = ["Top"]

_BAR_BITS = (BAR0_SIZE - 1).bit_length()  # address bits below this select inside BAR0
# The DMA engine answers the 32-byte block of BAR0 holding its registers.
_DMA_BLOCK = 0x20
_DMA_NAMES = ("DMA_ADDR", "DMA_LEN", "DMA_CTRL", "DMA_STATUS", "INT_STATUS")
assert all(r.offset & ~(_DMA_BLOCK - 1) == _DMA_BLOCK and r.offset + r.size <= 2 * _DMA_BLOCK
           for r in RNG_REGISTERS if r.name in _DMA_NAMES)
assert all(r.offset + r.size <= _DMA_BLOCK for r in RNG_REGISTERS if r.name not in _DMA_NAMES)


class Top(wiring.Component):
    """The whole device.

    Members
    -------
    req : In(RequestSignature())
        Requests; `ready` is high while idle, and while a completion is offered and
        `cpl.ready` is high (combinationally from `cpl.ready`, never from `req.valid`).
    cpl : Out(CompletionSignature())
        Completions, in request order; `valid` rises at the earliest on the second rising
        edge after the request was accepted (docs/rtl.md gives the latency per register).
    con : Out(ByteStreamSignature())
        The debugcon output bytes, in order.
    mreq : Out(RequestSignature())
        The device's own requests (DMA writes and flush reads, MSI messages), tag 0;
        only while COMMAND.MASTER (checked before each is offered).
    mcpl : In(CompletionSignature())
        Completions of the device's reads; `ready` while one is awaited.
    intx : Out(1)
        The INTx wire (INTA), a level (PCIe 4.0 2.2.8.1).
    active : Out(1)
        The device is working without host input (a DMA transfer or its MSI): it may
        issue requests and change `intx` until this falls.  A lock-step co-simulation
        keeps the clock running while it is high.
    """

    req: In(RequestSignature())
    cpl: Out(CompletionSignature())
    con: Out(ByteStreamSignature())
    mreq: Out(RequestSignature())
    mcpl: In(CompletionSignature())
    intx: Out(1)
    active: Out(1)

    def __init__(self, *, fifo_depth: int = debugcon.DEPTH) -> None:
        self.fifo_depth = fifo_depth
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.config = cfg = config.Header()
        m.submodules.rng = rng_ = rng.Peripheral()
        m.submodules.debugcon = con = debugcon.Peripheral(depth=self.fifo_depth)
        m.submodules.dma = engine = dma.Engine()
        wiring.connect(m, con.con, wiring.flipped(self.con))
        wiring.connect(m, engine.mreq, wiring.flipped(self.mreq))
        wiring.connect(m, wiring.flipped(self.mcpl), engine.mcpl)
        m.d.comb += [
            engine.number.eq(rng_.number), engine.number_ready.eq(rng_.ready),
            rng_.take.eq(engine.take), rng_.hold.eq(engine.busy),
            engine.master.eq((cfg.command & COMMAND_MASTER).any()),
            engine.intx_disable.eq((cfg.command & COMMAND_INTX_DISABLE).any()),
            engine.msi_enable.eq(cfg.msi_enable), engine.msi_address.eq(cfg.msi_address),
            engine.msi_data.eq(cfg.msi_data),
            cfg.interrupt.eq(engine.interrupt),
            self.intx.eq(engine.intx), self.active.eq(engine.busy),
        ]

        # The request being served, latched when accepted.
        fields = {name: Signal(width, name=f"r_{name}") for name, width in
                  REQUEST_FIELDS.items()}
        kind, addr, be = fields["kind"], fields["addr"], fields["be"]
        we = (kind == Kind.MEM_WRITE) | (kind == Kind.CFG_WRITE) | (kind == Kind.IO_WRITE)
        posted = kind == Kind.MEM_WRITE

        # Decode: which function claims the latched request.
        cfg_hit = (kind == Kind.CFG_READ) | (kind == Kind.CFG_WRITE)
        mem_hit = (((kind == Kind.MEM_READ) | (kind == Kind.MEM_WRITE))
                   & (cfg.command & COMMAND_MEMORY).any()  # memory decode needs COMMAND.MEM
                   & (addr[32:] == 0) & (addr[_BAR_BITS:32] == cfg.bar0[_BAR_BITS:]))
        io_hit = (((kind == Kind.IO_READ) | (kind == Kind.IO_WRITE))
                  & (addr == DEBUGCON_PORT & ~3) & be[DEBUGCON_PORT & 3])
        claimed = cfg_hit | mem_hit | io_hit
        dma_hit = mem_hit & (addr[5:_BAR_BITS] == _DMA_BLOCK >> 5)
        targets = ((cfg_hit, cfg.bus), (mem_hit & ~dma_hit, rng_.bus), (dma_hit, engine.bus),
                   (io_hit, con.bus))

        busy = Signal()
        ack = Signal()
        r_data = Signal(32)
        for hit, bus in targets:
            m.d.comb += [bus.stb.eq(busy & hit), bus.we.eq(we), bus.be.eq(be),
                         bus.w_data.eq(fields["data"])]
            if "addr" in bus.signature.members:
                m.d.comb += bus.addr.eq(addr)
            with m.If(hit):
                m.d.comb += [ack.eq(bus.ack), r_data.eq(bus.r_data)]

        latch = [f.eq(getattr(self.req, name)) for name, f in fields.items()]
        with m.FSM():
            with m.State("IDLE"):
                # Wait for a request and latch it.
                m.d.comb += self.req.ready.eq(1)
                with m.If(self.req.valid):
                    m.d.sync += latch
                    m.next = "BUSY"
            with m.State("BUSY"):
                # Strobe the claiming function until it acknowledges (unclaimed: at once).
                m.d.comb += busy.eq(1)
                with m.If(~claimed | ack):
                    m.d.sync += [
                        self.cpl.tag.eq(fields["tag"]),  # the completion echoes the tag
                        self.cpl.status.eq(Mux(claimed, Status.SC, Status.UR)),
                        self.cpl.data.eq(Mux(claimed & ~we, r_data, 0)),
                    ]
                    with m.If(posted):
                        m.next = "IDLE"  # a memory write is posted: no completion
                    with m.Else():
                        m.next = "RESPOND"
            with m.State("RESPOND"):
                # Offer the completion until the host takes it; on that edge the next
                # request may be accepted already (`req.ready` follows `cpl.ready` here).
                m.d.comb += self.cpl.valid.eq(1)
                with m.If(self.cpl.ready):
                    m.d.comb += self.req.ready.eq(1)
                    with m.If(self.req.valid):
                        m.d.sync += latch
                        m.next = "BUSY"
                    with m.Else():
                        m.next = "IDLE"
        return m
