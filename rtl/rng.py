"""The RNG function in BAR0: glibc's srand()/rand() in hardware, bit-exact.

State: a 31-word shift register `s[0..30]` holding the last 31 words of glibc's state
sequence r[] (s[0] = r[i-31], the oldest; s[30] = r[i-1], the newest).  Every step shifts
one new word in at s[30]:

- SEED write: r[0] = seed (0 taken as 1), the raw 32-bit value (glibc keeps it as int32);
- then 30 LCG cycles: r[i] = (16807 * r[i-1]) mod (2^31 - 1), r[0] read as SIGNED int32;
- then 3 copy cycles: r[i] = r[i-31] for i = 31..33 (glibc's ring buffer starts its front
  pointer 3 words ahead of the rear one, so the first 3 sums add r[0..2] to themselves
  shifted by 3: the linear sequence equivalent is this copy);
- then 310 discard cycles and one step per read of a number (a DW read of RNG or of
  either DW of RNG64): r[i] = r[i-3] + r[i-31] mod 2^32, the read returning r[i] >> 1.

After reset the state holds r[0] = 1 and the LCG cycles run, exactly as after a SEED write
of 1, so the function behaves as after srand(1).  A read of RNG, or of either DW of
RNG64, during seeding is held (no `ack`) until the first number is ready.  The DMA
engine takes numbers through `number`/`take`; while it runs (`hold`) SEED writes and
reads of numbers wait, so the host and the engine never interleave in the stream.
Register semantics: `RNG_REGISTERS` in models/contract/regmap.py.

Ref: glibc stdlib/random_r.c (__srandom_r, __random_r), TYPE_3: degree 31, separation 3;
models/glibc_rand.py is the same recurrence in Python.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

from models.contract.glibc_type3 import DEGREE, DISCARD, MODULUS, MULTIPLIER, SEPARATION
from models.contract.regmap import BAR0_SIZE, RNG_NEXT_DWORDS, RNG_REGISTERS
from rtl.transaction import AccessSignature

__all__ = ["Lcg", "Peripheral", "Phase"]

_REG = {reg.name: reg for reg in RNG_REGISTERS}
RESET_SEED = 1  # before any SEED write the generator is as after srand(1)


class Lcg(wiring.Component):
    """One step of the seeding LCG, combinational: (16807 * word) mod (2^31 - 1), `word`
    read as a SIGNED int32.

    Only r[0] can have bit 31 set.  A negative int32 w is w_u - 2^32, and 2^32 = 2 * 2^31
    is 2 mod (2^31 - 1), so its residue class is that of the non-negative w_u - 2.
    The product is then < 2^47 and the Mersenne fold (p & m) + (p >> 31) (2^31 = 1 mod m)
    brings it below 2m, so one conditional subtraction finishes it.

    Members
    -------
    word : In(32)
        The previous state word.
    result : Out(31)
        The next state word, combinationally from `word`.
    """

    def __init__(self) -> None:
        super().__init__({"word": In(32), "result": Out(31)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        w = Signal(32)
        p = Signal(47)
        fold = Signal(32)
        word = self.word
        m.d.comb += [
            w.eq(Mux(word[31], word - 2, word)),  # signed int32 seed: sext(w) = w - 2 (mod m)
            p.eq(w * MULTIPLIER),
            fold.eq((p & MODULUS) + (p >> 31)),
            self.result.eq(Mux(fold >= MODULUS, fold - MODULUS, fold)),
        ]
        return m


class Phase(enum.Enum, shape=2):
    LCG = 0  # building r[1..30] with the seeding LCG, one word per cycle
    COPY = 1  # r[31..33] = r[0..2], one word per cycle
    DISCARD = 2  # running the additive generator 310 times without output
    READY = 3  # each read of a number (RNG, RNG64 DWs) takes one step and returns it


class Peripheral(wiring.Component):
    """The RNG registers of BAR0.

    Members
    -------
    bus : In(AccessSignature(log2(BAR0_SIZE)))
        Accesses with the offset inside BAR0.  Reads of a number (RNG, each DW of RNG64)
        `ack` in the first cycle where `phase` is READY (the strobe cycle if already
        ready); every other access `ack`s in its strobe cycle.  A SEED write starts
        seeding on the rising edge ending that cycle.
    ready : Out(1)
        Status: the next number is ready (seeding finished).  Falls on the rising edge that
        accepts a SEED write and rises again 30 + 3 + 310 rising edges later.
    number : Out(31)
        The next number (what a read of RNG would return), valid while `ready`;
        combinational from the state, so stable until a step.
    take : In(1)
        The DMA engine takes `number`: the generator steps on this rising edge.  Only
        while `ready` and `hold`.
    hold : In(1)
        A transfer is running: SEED writes and reads of numbers are not acknowledged.
    """

    def __init__(self) -> None:
        super().__init__({
            "bus": In(AccessSignature((BAR0_SIZE - 1).bit_length())),
            "ready": Out(1),
            "number": Out(31),
            "take": In(1),
            "hold": In(1),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        bus = self.bus

        s = [Signal(32, name=f"s{i}", init=RESET_SEED if i == DEGREE - 1 else 0)
             for i in range(DEGREE)]
        phase = Signal(Phase, init=Phase.LCG)
        count = Signal(range(DISCARD), init=DEGREE - 2)  # steps left in this phase, minus 1

        m.submodules.lcg = lcg = Lcg()
        m.d.comb += lcg.word.eq(s[DEGREE - 1])
        # The additive feedback: r[i] = r[i-3] + r[i-31] (taps at separation 3 and degree 31).
        feedback = Signal(32)
        m.d.comb += feedback.eq(s[DEGREE - SEPARATION] + s[0])

        reg = bus.addr[2:]
        # A read of RNG or of either DW of RNG64 takes the next number (RNG_NEXT_DWORDS).
        next_dws = [off >> 2 for off in RNG_NEXT_DWORDS]
        rd_next = bus.stb & ~bus.we & reg.matches(*next_dws)
        seed_access = bus.stb & bus.we & (reg == _REG["SEED"].offset >> 2)
        waits = self.hold & (rd_next | seed_access)  # until the DMA transfer ends
        wr_seed = seed_access & (bus.be == 0xF) & ~self.hold

        shift_in = Signal(32)
        shift = Signal()
        m.d.comb += [
            self.ready.eq(phase == Phase.READY),
            self.number.eq(feedback >> 1),
            # Reads of a number wait for the generator; everything else completes at once,
            # except what waits for a DMA transfer.
            bus.ack.eq(Mux(rd_next, phase == Phase.READY, bus.stb) & ~waits),
            bus.r_data.eq(0),
        ]
        with m.If(~bus.we):
            with m.Switch(reg):
                with m.Case(*next_dws):
                    m.d.comb += bus.r_data.eq(feedback >> 1)
                for r in RNG_REGISTERS:
                    if r.value is not None:  # constant registers (ID, CAPS): one DW each
                        with m.Case(r.offset >> 2):
                            m.d.comb += bus.r_data.eq(r.value)

        with m.If(wr_seed):
            # SEED write (any phase, restarts seeding): r[0] = seed; glibc takes 0 as 1.
            m.d.comb += [shift.eq(1), shift_in.eq(Mux(bus.w_data == 0, 1, bus.w_data))]
            m.d.sync += [phase.eq(Phase.LCG), count.eq(DEGREE - 2)]
        with m.Elif(phase == Phase.LCG):
            m.d.comb += [shift.eq(1), shift_in.eq(lcg.result)]
            m.d.sync += count.eq(count - 1)
            with m.If(count == 0):
                m.d.sync += [phase.eq(Phase.COPY), count.eq(SEPARATION - 1)]
        with m.Elif(phase == Phase.COPY):
            m.d.comb += [shift.eq(1), shift_in.eq(s[0])]
            m.d.sync += count.eq(count - 1)
            with m.If(count == 0):
                m.d.sync += [phase.eq(Phase.DISCARD), count.eq(DISCARD - 1)]  # 310 discards
        with m.Elif(phase == Phase.DISCARD):
            m.d.comb += [shift.eq(1), shift_in.eq(feedback)]
            m.d.sync += count.eq(count - 1)
            with m.If(count == 0):
                m.d.sync += phase.eq(Phase.READY)
        with m.Elif((rd_next & ~self.hold) | self.take):  # READY: a read acked now, or DMA
            m.d.comb += [shift.eq(1), shift_in.eq(feedback)]

        with m.If(shift):
            m.d.sync += [dst.eq(src) for dst, src in zip(s, s[1:] + [shift_in], strict=True)]
        return m
