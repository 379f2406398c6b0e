"""The RTL as an `Endpoint` through the lock-step wrapper (`lockstep_wrapper`): the bridge's path.

    ep = LockstepEndpoint(dut, console_sink=...)   # dut: the `cosim_lockstep` toplevel
    await ep.start()                                # reset
    cpl = await ep.transact(Request(...))

One request at a time, lock-step, as the QEMU bridge serves them.  A transaction is three
Python <-> simulator crossings: one write of the packed request (which toggles its `seq`
bit), one wait for `done` to toggle, one read of the packed response; the stream
handshakes, the clock and the timeout watchdog run in HDL.  The testbench keeps the
pyuvm-grade `tb.rtl_endpoint.RtlEndpoint` (idle and back-pressure patterns, pipelining,
monitors); this class is what the bridge and the speed bench need, and it is checked
against the models like the full one (`tb/cases_lockstep.py`).

Signals are accessed through their GPI objects (`qbridge.rtl.private_api`) with plain ints, as
32-bit word ports, and only the request words that changed are written: the public
`.value` API converts through `LogicArray`/binary strings and schedules writes, which was
most of the Python time per transaction (bench/README.md, py-spy).  Verilator is 2-state,
so its words are read as integers; Icarus's are read as binary strings, so an X or Z in
a response raises instead of reading as 0.
Writes are immediate: they happen at falling edges (`done` toggles there, and waits are
aligned to them), so they are sampled at the next rising edge without a race.

On Verilator a transaction does not go through cocotb at all: the lock-step build's main loop
(verilator_main.cpp) exports `cosim_lockstep_exchange`, called through ctypes with the
request vector's bytes; it writes the request ports, runs the clock edges up to `done`
right there and returns the response vector (one call instead of VPI writes and reads
per word, leaving the callback, a value-change trigger and resuming the coroutine:
bench/README.md).  It steps only while no other cocotb trigger could be due at those
edges and otherwise leaves the wait to cocotb, so the result is the same edge by edge;
`direct_steps` counts the requests it served to the end.

Batches (`transact_all`, e.g. a debugcon burst of thousands of I/O writes): on Verilator
`cosim_lockstep_exchange_all` serves them back to back in one call, each exactly as a
`cosim_lockstep_exchange` of its own (and freeing the console ring after each, as the
endpoint does), returning every response and the time each was done; on Icarus they go
one by one through cocotb with the ring freed at half full.  Either way the console
bytes reach the sink once per batch, and `batch_stamps()` gives the txlog a time per
request.  A debugcon stream (`io_write_stream`: raw bytes, no `Request` per byte) goes on
Verilator to `cosim_lockstep_stream`, which builds the 1-byte I/O writes itself and
returns their statuses, data and times in arrays; on Icarus through `transact_all`.

Errors are loud: a request not done within `timeout_cycles` raises `TimeoutError`, a
completion with another tag `RuntimeError`, an X/Z on the response `ValueError`.
"""

from __future__ import annotations

import array
import ctypes
import logging
from collections.abc import Callable, Sequence

from cocotb.handle import SimHandleBase
from cocotb.simtime import get_sim_time
from cocotb.triggers import Timer

from models.contract.regmap import DMA_MAX_LEN
from models.contract.transaction import (
    Completion,
    HostPort,
    Kind,
    Request,
    Status,
    StreamCompletions,
    stream_lane,
    stream_requests,
)
from models.device import NoHost
from models.host_memory import MSI_WINDOW
from qbridge.rtl.lockstep_wrapper import (
    CPL_LAYOUT,
    DREQ_LAYOUT,
    HCPL_LAYOUT,
    PAIR_STEP,
    PERIOD_NS,
    REQ_BYTES,
    REQ_LAYOUT,
    RING,
    RSP_LAYOUT,
    SETTLE,
    WORD,
    words,
)
from qbridge.rtl.private_api import gpi, is_two_state, sim_steps, write_now
from qbridge.rtl.private_api import precision as sim_precision

__all__ = ["LockstepEndpoint"]

log = logging.getLogger("cosim.bridge.rtl.lockstep")

_COUNT_MASK = (1 << dict(RSP_LAYOUT.fields)["con_wr"]) - 1
_CON_WR_LO = RSP_LAYOUT.offset("con_wr")
_TIMED_OUT = RSP_LAYOUT.offset("timed_out")
_WORD_MASK = (1 << WORD) - 1
_SEQ = REQ_LAYOUT.offset("seq")
_SVC = REQ_LAYOUT.offset("svc")
_PAIR = REQ_LAYOUT.offset("pair")
# (Request attribute, bit offset) per request field, from the one layout.
_REQ_FIELDS = tuple((name, REQ_LAYOUT.offset(name)) for name, _ in REQ_LAYOUT.fields
                    if name not in ("seq", "svc", "pair"))
_RSP_STATE = ("intx", "active", "dev_pend", "timed_out", "con_wr")
_CPL_FIELDS = tuple((name, RSP_LAYOUT.offset(name), (1 << width) - 1)
                    for name, width in RSP_LAYOUT.fields if name not in _RSP_STATE)
# The device's side in the response: its INTx level, whether it works on by itself
# (a transfer: the host must keep clocking it), whether it holds a request for the host.
_INTX = RSP_LAYOUT.offset("intx")
_DEVICE_BUSY = 1 << RSP_LAYOUT.offset("active") | 1 << RSP_LAYOUT.offset("dev_pend")
_DEV_PEND = RSP_LAYOUT.offset("dev_pend")
_DREQ = {name: (DREQ_LAYOUT.offset(name), (1 << width) - 1)
         for name, width in DREQ_LAYOUT.fields}
_HCPL = {name: HCPL_LAYOUT.offset(name) for name, _ in HCPL_LAYOUT.fields}
_KINDS = {int(k): k for k in Kind}
# The longest legal piece of device work after one guest access, a DMA_MAX_LEN transfer
# (a DW per cycle streamed, a few cycles each held), is far below this bound.
_DEVICE_LIMIT_CYCLES = 32 * (DMA_MAX_LEN // 4)
_SERVICE_CAP = 4096  # device requests one cosim_lockstep_service call collects at most
_FULL_WRITE = int(Kind.MEM_WRITE) | 0xF << 8  # a stored meta: a write of a whole DW, tag 0


def _touches_msi(addr: int, size: int) -> bool:
    return addr < MSI_WINDOW.stop and MSI_WINDOW.start < addr + size
_CPL = {name: (shift, mask) for name, shift, mask in _CPL_FIELDS}
(_TAG, _TAG_MASK), (_STATUS_LO, _STATUS_MASK), (_DATA_LO, _DATA_MASK) = (
    _CPL["tag"], _CPL["status"], _CPL["data"])
if _DATA_LO != 0:
    raise ImportError(f"transact() expects the completion data in the low bits: {_CPL}")
_STATUS = {int(s): s for s in Status}
# The first completion of a pair (`first_w*`), in CPL_LAYOUT (same widths as in RSP_LAYOUT).
_F_TAG, _F_STATUS = CPL_LAYOUT.offset("tag"), CPL_LAYOUT.offset("status")
if CPL_LAYOUT.offset("data") != 0:
    raise ImportError("the first completion's data must be in the low bits")
_PAIR_ADDR, _PAIR_TAG = PAIR_STEP["addr"], PAIR_STEP["tag"]
_READS = frozenset(k for k in Kind if not k.is_write)
_POSTED = frozenset(k for k in Kind if k.posted)  # `Kind.posted` is a property: slow
# cosim_lockstep_exchange's statuses (verilator_main.cpp); a response is >= 0.
_STEP_DONE = 0
_STEP_YIELD = -2
_STEP_ERRORS = {-1: "`done` did not toggle within the wrapper's timeout (its watchdog failed)",
                -3: "no model: called outside the simulation",
                -4: "console ring overrun"}
_STEP_WRONG_TAG = -5  # cosim_lockstep_stream: the last request done has another tag
_STEP_MARGIN = 64  # cycles beyond the HDL watchdog before the main loop gives up
# A batch's request vectors are packed field by field without a loop (`_vectors`).
_REQ_NAMES = tuple(name for name, _ in _REQ_FIELDS)
if _REQ_NAMES != ("kind", "tag", "addr", "be", "data"):
    raise ImportError(f"_vectors expects the request fields kind, tag, addr, be, data: "
                      f"{_REQ_NAMES}")
_KIND_LO, _TAG_LO, _ADDR_LO, _BE_LO, _REQ_DATA_LO = (shift for _, shift in _REQ_FIELDS)
# The cocotb path of a batch frees the console ring once it is half full (and at the
# batch's end) instead of after every request: an I/O write adds one byte (the wrapper's
# `tail` waits until it is in the ring), so the ring never fills and `con__ready`, which
# the RTL sees, stays as it was with a drain per request.
_DRAIN_AT = RING // 2


class LockstepEndpoint:
    """`cosim_lockstep` as an `Endpoint`; see the module docstring."""

    def __init__(
        self,
        dut: SimHandleBase,
        console_sink: Callable[[bytes], None] | None = None,
        *,
        period_ns: int = PERIOD_NS,
        timeout_cycles: int = 100_000,
        reset_cycles: int = 4,
    ) -> None:
        if timeout_cycles <= 0 or timeout_cycles >= 1 << 32:
            raise ValueError(
                f"Timeout must be a positive 32-bit cycle count, not {timeout_cycles!r}")
        if period_ns != PERIOD_NS:
            raise ValueError(
                f"The lock-step wrapper's clock period is {PERIOD_NS} ns, not {period_ns!r}")
        if reset_cycles <= 0:
            raise ValueError(f"Reset must last at least one cycle, not {reset_cycles!r}")
        self.dut = dut
        self.period_ns = period_ns
        self.timeout_cycles = timeout_cycles
        self.reset_cycles = reset_cycles
        self._console_sink = console_sink
        self._req_words = [gpi(getattr(dut, f"req_w{i}"))
                           for i in range(len(words(REQ_LAYOUT.width)))]
        self._req_last: list[int | None] = [None] * len(self._req_words)
        rsp_words = [gpi(getattr(dut, f"rsp_w{i}"))
                     for i in range(len(words(RSP_LAYOUT.width)))]
        self._read_word = _long if is_two_state() else _binstr
        self._rsp_words = rsp_words
        self._first_words = [gpi(getattr(dut, f"first_w{i}"))
                             for i in range(len(words(CPL_LAYOUT.width)))]
        self._dreq_words = [gpi(getattr(dut, f"dreq_w{i}"))
                            for i in range(len(words(DREQ_LAYOUT.width)))]
        self._hcpl_words = [gpi(getattr(dut, f"hcpl_w{i}"))
                            for i in range(len(words(HCPL_LAYOUT.width)))]
        self._hcpl_seq = 0
        self._intx = False
        self.device_requests = 0  # requests of the device served (DMA writes, reads, MSI)
        self._ring = gpi(dut.con_ring)
        self._con_rd_h = gpi(dut.con_rd)
        self._done = dut.done.value_change
        self._steps_per_ns = _steps_per_ns()
        self._seq = 0
        self._con_rd = 0
        self._direct = _direct_exchange()
        self._direct_all = _direct_exchange_all() if self._direct is not None else None
        self._direct_stream = _direct_stream() if self._direct is not None else None
        self._direct_service = _direct_service() if self._direct is not None else None
        # Where cosim_lockstep_service stores the device's requests (struct of arrays).
        self._svc_addrs = array.array("Q", bytes(8 * _SERVICE_CAP))
        self._svc_datas = array.array("I", bytes(4 * _SERVICE_CAP))
        self._svc_metas = array.array("I", bytes(4 * _SERVICE_CAP))
        self._stamps: Sequence[int] = []  # simulation steps at which each of a batch was done
        self._first = ctypes.c_uint64()  # the first completion of a pair, from C++
        self._first_addr = ctypes.addressof(self._first)
        # Where the device's own requests go (the bridge's core sets the guest).
        self.host: HostPort = NoHost()
        self.started = False
        self.transactions = 0
        self.exchanges = 0  # requests and pairs sent to the wrapper
        self.direct_steps = 0  # exchanges served by cosim_lockstep_exchange, not via cocotb

    async def start(self) -> None:
        """Set the wrapper's inputs and apply a reset (the clock runs in the wrapper)."""
        if self.started:
            raise RuntimeError("LockstepEndpoint.start() called twice")
        write_now(gpi(self.dut.rst), 1)
        # The ring's write count lives in the wrapper (it may have served an endpoint
        # before, e.g. an earlier test in the same simulation): start from where it is.
        await self._to_falling_edge()
        self._con_rd = (self._rsp() >> _CON_WR_LO) & _COUNT_MASK
        self.started = True
        log.info("lock-step RTL endpoint: period %d ns, timeout %d cycles",
                 self.period_ns, self.timeout_cycles)
        await self.reset()

    def cycle(self) -> int:
        return int(get_sim_time("ns") // self.period_ns)

    def now(self) -> str:
        """The simulation time as "<n>ns", cheaply (cocotb's get_sim_time(unit) converts
        through Fraction/Decimal; the txlog asks once per request)."""
        return f"{sim_steps() // self._steps_per_ns}ns"

    async def _exchange(self, req: Request, pair: Request | None = None) -> int:
        """Start `req` (as the first of a pair if `pair` is its second), wait until the
        wrapper is done; its response word, console bytes that came meanwhile handed on."""
        if not self.started:
            raise RuntimeError("LockstepEndpoint used before start()")
        self._seq ^= 1
        vec = self._seq << _SEQ | (pair is not None) << _PAIR
        for name, shift in _REQ_FIELDS:
            vec |= getattr(req, name) << shift
        rsp = await self._run(vec, req)
        self.transactions += 1 if pair is None else 2
        self.exchanges += 1
        if rsp >> _TIMED_OUT & 1:
            what = req if pair is None else f"{req} and {pair}"  # formatted only on error
            raise TimeoutError(f"{what} not done within {self.timeout_cycles} cycles")
        return rsp

    async def _run(self, vec: int, what: object) -> int:
        """One exchange of the request vector `vec` (a request, a pair or a service);
        its response word, console bytes that came meanwhile handed on.  `what` names it
        in an error."""
        exchange = self._direct
        if exchange is None:
            self._write_req(vec)
            await self._done
            rsp = self._rsp()
        else:
            # C++ writes every request word itself: `_req_last` is not used on this path.
            rsp = exchange(vec.to_bytes(REQ_BYTES, "little"), self._first_addr,
                           self.timeout_cycles + _STEP_MARGIN)
            if rsp >= 0:
                self.direct_steps += 1
            elif rsp != _STEP_YIELD:
                why = _STEP_ERRORS.get(rsp, f"unknown status {rsp}")
                raise RuntimeError(f"cosim_lockstep_exchange for {what}: {why}")
            else:  # another trigger may be due meanwhile: cocotb schedules this wait
                await self._done
                rsp = self._rsp()
                self._first.value = self._read_first()
                # Resumed inside a value-change callback, which Verilator keeps listed
                # (so cosim_lockstep_exchange would yield) until its main loop runs again:
                # one wait for a timer lets it, so later requests are direct again.
                await self._to_falling_edge()
        con_wr = (rsp >> _CON_WR_LO) & _COUNT_MASK
        if con_wr != self._con_rd:
            self._drain(con_wr)
        return rsp

    async def _device(self, rsp: int) -> None:
        """After an exchange whose response is `rsp`: serve the device while it works by
        itself or holds a request, and hand its INTx level on (the wrapper lets a write
        settle until its effect shows in the response).

        Lock-step: simulated time only advances in exchanges, so a DMA transfer started by
        a register write runs here, to its end, before the guest's next access is served
        (the golden model runs it inside the START write; the guest cannot tell the two
        apart, as reads of numbers and the registers wait while a transfer runs)."""
        held_served = False  # the request the wrapper holds was already handed on
        if rsp & _DEVICE_BUSY:
            limit = sim_steps() + _DEVICE_LIMIT_CYCLES * self.period_ns * self._steps_per_ns
            while True:
                if sim_steps() > limit:
                    raise TimeoutError(f"the device kept working for more than "
                                       f"{_DEVICE_LIMIT_CYCLES} cycles after one guest access "
                                       f"(the longest transfer needs far fewer)")
                self._intx_level(rsp)
                if rsp >> _DEV_PEND & 1:  # held since the last exchange: take it first
                    if not held_served:
                        self._serve_request()
                elif not rsp & _DEVICE_BUSY:
                    break
                if self._direct_service is not None:
                    rsp, held_served = await self._service_direct()
                else:
                    self._seq ^= 1
                    rsp = await self._run(self._seq << _SEQ | 1 << _SVC, "a device service")
                    self.exchanges += 1
                if rsp >> _TIMED_OUT & 1:
                    raise TimeoutError(f"the device was still busy after "
                                       f"{self.timeout_cycles} cycles without a request")
        self._intx_level(rsp)

    async def _service_direct(self) -> tuple[int, bool]:
        """Verilator: service exchanges in the main loop (`cosim_lockstep_service`), the
        device's requests collected there and handed on here, a contiguous run of full
        DW writes at once where the host takes blocks.  Returns the last response and
        whether the request it says the wrapper holds was handed on already."""
        assert self._direct_service is not None
        started, rsp_c, status = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_int64()
        n = self._direct_service(self._seq, self._svc_addrs.buffer_info()[0],
                                 self._svc_datas.buffer_info()[0],
                                 self._svc_metas.buffer_info()[0], _SERVICE_CAP,
                                 self._con_rd, ctypes.byref(started), ctypes.byref(rsp_c),
                                 self.timeout_cycles + _STEP_MARGIN, ctypes.byref(status))
        self._seq ^= started.value & 1
        self.exchanges += started.value
        self.direct_steps += started.value
        self._hand_on(n)
        if status.value == _STEP_YIELD:  # the last one started is left to cocotb
            await self._done
            rsp = self._rsp()
            await self._to_falling_edge()  # as in `_run`: direct again after it
            held = False
        elif status.value != _STEP_DONE:
            why = _STEP_ERRORS.get(status.value, f"unknown status {status.value}")
            raise RuntimeError(f"cosim_lockstep_service: {why}")
        else:
            rsp = rsp_c.value
            held = bool(rsp >> _DEV_PEND & 1)
        con_wr = (rsp >> _CON_WR_LO) & _COUNT_MASK
        if con_wr != self._con_rd:
            self._drain(con_wr)
        return rsp, held

    def _hand_on(self, n: int) -> None:
        """The `n` requests `cosim_lockstep_service` stored, to the host in order: a run
        of contiguous full-DW memory writes outside the MSI window as one block where the
        host offers `memory_write_block`, everything else one by one."""
        addrs, datas, metas = self._svc_addrs, self._svc_datas, self._svc_metas
        block = getattr(self.host, "memory_write_block", None)
        self.device_requests += n
        i = 0
        # The usual case, checked at C speed: a page of writes, then its flush read.
        m = n - 1 if n and metas[n - 1] != _FULL_WRITE else n
        if block is not None and m > 1 and metas[:m].count(_FULL_WRITE) == m:
            a0 = addrs[0]
            if (addrs[:m] == array.array("Q", range(a0, a0 + 4 * m, 4))
                    and not _touches_msi(a0, 4 * m)):
                block(a0, datas[:m].tobytes())
                i = m
        while i < n:
            if block is not None and metas[i] == _FULL_WRITE:
                j = i + 1
                while j < n and metas[j] == _FULL_WRITE and addrs[j] == addrs[j - 1] + 4:
                    j += 1
                if j - i > 1 and not _touches_msi(addrs[i], 4 * (j - i)):
                    block(addrs[i], datas[i:j].tobytes())
                    i = j
                    continue
            meta = metas[i]
            kind = _KINDS.get(meta & 0xFF)
            req = Request(kind if kind is not None else Kind.MEM_READ, addrs[i],
                          (meta >> 8) & 0xF, datas[i], (meta >> 16) & 0xFF)
            self._hand_request(req, meta & 0xFF)
            i += 1

    def _intx_level(self, rsp: int) -> None:
        level = bool(rsp >> _INTX & 1)
        if level != self._intx:
            self._intx = level
            self.host.intx(level)

    def _serve_request(self) -> None:
        """The device's request the wrapper holds, to the host; a read's completion back
        (offered to the device in the next service exchange)."""
        vec = self._read_vector(self._dreq_words)
        f = {name: (vec >> shift) & mask for name, (shift, mask) in _DREQ.items()}
        kind = _KINDS.get(f["kind"])
        self.device_requests += 1
        self._hand_request(Request(kind if kind is not None else Kind.MEM_READ, f["addr"],
                                   f["be"], f["data"], f["tag"]), f["kind"])

    def _hand_request(self, req: Request, kind_bits: int) -> None:
        """One device request to the host (`kind_bits` as the device drove them)."""
        if kind_bits == Kind.MEM_WRITE:
            self.host.memory_write(req)
            return
        if kind_bits != Kind.MEM_READ:
            raise RuntimeError(f"the device issued a request of kind {kind_bits} on mreq: "
                               f"only memory writes and reads are a bus master's")
        cpl = self.host.memory_read(req)
        self._hcpl_seq ^= 1
        hcpl = (self._hcpl_seq << _HCPL["seq"] | cpl.tag << _HCPL["tag"]
                | int(cpl.status) << _HCPL["status"] | cpl.data << _HCPL["data"])
        for i, handle in enumerate(self._hcpl_words):
            write_now(handle, (hcpl >> (WORD * i)) & _WORD_MASK)

    async def transact(self, req: Request) -> Completion | None:
        rsp = await self._exchange(req)
        await self._device(rsp)
        if req.kind.posted:
            return None
        tag = (rsp >> _TAG) & _TAG_MASK
        if tag != req.tag:
            raise RuntimeError(f"completion tag {tag} for {req}")
        return Completion(tag, _STATUS[(rsp >> _STATUS_LO) & _STATUS_MASK], rsp & _DATA_MASK)

    async def transact_all(self, reqs: Sequence[Request]) -> list[Completion | None]:
        """`reqs` in order, each exactly as `transact` serves it (the RTL sees the same
        requests, cycle by cycle), at less cost per request:
        - the two DW reads of an 8-byte read (`Host`) go to the wrapper as one pair: one
          Python <-> simulator round trip instead of two;
        - any other batch (a debugcon burst: `Host.io_write_each`) on Verilator goes to
          the main loop's `cosim_lockstep_exchange_all`, one ctypes call for all of it;
          on Icarus one request at a time, with the console ring freed only when half
          full.  The console bytes reach the sink once per batch, also when a request of
          it fails (its error is raised after they were handed on).
        `batch_stamps()` then gives the time each request was done (the txlog's)."""
        if len(reqs) == 2 and _is_pair(reqs[0], reqs[1]):
            pair: list[Completion | None] = [*await self._transact_pair(reqs[0], reqs[1])]
            self._stamps = [sim_steps()] * 2
            return pair
        self._stamps = []
        console = bytearray()
        try:
            if self._direct_all is not None:
                cpls = await self._batch_direct(reqs, console)
            else:
                cpls = await self._batch_cocotb(reqs, console)
        finally:
            if console and self._console_sink is not None:
                self._console_sink(bytes(console))
        await self._device(self._rsp())  # the response as it stands after the batch
        return cpls

    def batch_stamps(self) -> list[str]:
        """The simulation time ("<n>ns") each request of the last `transact_all` was done."""
        per_ns = self._steps_per_ns
        return [f"{steps // per_ns}ns" for steps in self._stamps]

    def _completion(self, req: Request, rsp: int) -> Completion | None:
        """`req`'s result from its response vector; raises for a timeout or a wrong tag."""
        if rsp >> _TIMED_OUT & 1:
            raise TimeoutError(f"{req} not done within {self.timeout_cycles} cycles")
        if req.kind in _POSTED:
            return None
        tag = (rsp >> _TAG) & _TAG_MASK
        if tag != req.tag:
            raise RuntimeError(f"completion tag {tag} for {req}")
        return Completion(tag, _STATUS[(rsp >> _STATUS_LO) & _STATUS_MASK], rsp & _DATA_MASK)

    def _vectors(self, reqs: Sequence[Request]) -> list[int]:
        """The request vectors of `reqs` as `_exchange` packs one, seq toggling from one
        to the next (starting from the current one)."""
        seq = self._seq
        vecs = []
        for req in reqs:
            seq ^= 1
            vecs.append(seq << _SEQ | req.kind << _KIND_LO | req.tag << _TAG_LO
                        | req.addr << _ADDR_LO | req.be << _BE_LO | req.data << _REQ_DATA_LO)
        return vecs

    async def _batch_direct(self, reqs: Sequence[Request],
                            console: bytearray) -> list[Completion | None]:
        """Verilator: `reqs` through `cosim_lockstep_exchange_all`, as many calls as it
        needs (it stops early when cocotb must schedule a wait, or when its console buffer
        is short of room); a request it leaves to cocotb is served as `_exchange` does."""
        if not self.started:
            raise RuntimeError("LockstepEndpoint used before start()")
        assert self._direct_all is not None
        cpls: list[Completion | None] = []
        stamps = self._stamps
        assert isinstance(stamps, list)
        limit = self.timeout_cycles + _STEP_MARGIN
        con_len = ctypes.c_uint64()
        con_rd = ctypes.c_uint32()
        status = ctypes.c_int64()
        i = 0
        while i < len(reqs):
            rest = reqs[i:]
            n = len(rest)
            packed = b"".join(vec.to_bytes(REQ_BYTES, "little") for vec in self._vectors(rest))
            rsps = array.array("Q", bytes(8 * n))
            times = array.array("Q", bytes(8 * n))
            con = ctypes.create_string_buffer(n + 2 * RING)
            con_rd.value = self._con_rd
            done = self._direct_all(packed, n, rsps.buffer_info()[0], times.buffer_info()[0],
                                    con, len(con), ctypes.byref(con_len),
                                    ctypes.byref(con_rd), limit, ctypes.byref(status))
            console += con.raw[:con_len.value]
            self._con_rd = con_rd.value
            self._seq ^= done & 1
            self.transactions += done
            self.exchanges += done
            self.direct_steps += done
            stamps += times[:done]
            for req, rsp in zip(rest[:done], rsps[:done], strict=True):
                cpls.append(self._completion(req, rsp))
            i += done
            if status.value == _STEP_YIELD:  # request `i` is written: cocotb waits for it
                self._seq ^= 1
                await self._done
                rsp = self._rsp()
                stamps.append(sim_steps())
                con_wr = (rsp >> _CON_WR_LO) & _COUNT_MASK
                if con_wr != self._con_rd:
                    console += self._take_ring(con_wr)
                await self._to_falling_edge()  # as in `_exchange`: direct again after it
                self.transactions += 1
                self.exchanges += 1
                cpls.append(self._completion(reqs[i], rsp))
                i += 1
            elif status.value != _STEP_DONE:
                why = _STEP_ERRORS.get(status.value, f"unknown status {status.value}")
                raise RuntimeError(f"cosim_lockstep_exchange_all for {reqs[i]}: {why}")
            elif not done:  # its console buffer always has room for one request
                raise RuntimeError(f"cosim_lockstep_exchange_all served none of {n} requests")
        return cpls

    async def _batch_cocotb(self, reqs: Sequence[Request],
                            console: bytearray) -> list[Completion | None]:
        """Icarus: one request at a time through cocotb, as `_exchange` without a pair,
        the ring freed at half full (`_DRAIN_AT`) and at the end."""
        if not self.started:
            raise RuntimeError("LockstepEndpoint used before start()")
        cpls: list[Completion | None] = []
        stamps = self._stamps
        assert isinstance(stamps, list)
        done = self._done
        con_wr = self._con_rd
        try:
            for vec, req in zip(self._vectors(reqs), reqs, strict=True):
                self._seq ^= 1
                self._write_req(vec)
                await done
                rsp = self._rsp()
                stamps.append(sim_steps())
                self.transactions += 1
                self.exchanges += 1
                con_wr = (rsp >> _CON_WR_LO) & _COUNT_MASK
                if (con_wr - self._con_rd) & _COUNT_MASK >= _DRAIN_AT:
                    console += self._take_ring(con_wr)
                cpls.append(self._completion(req, rsp))
        finally:
            if con_wr != self._con_rd:
                console += self._take_ring(con_wr)
        return cpls

    async def io_write_stream(self, port: int, data: bytes, tag: int) -> StreamCompletions:
        """`stream_requests(port, data, tag)` (the `Endpoint` protocol's optional stream
        method: a debugcon burst), each served exactly as `transact` serves it.

        On Verilator the main loop's `cosim_lockstep_stream` builds the requests from the
        raw bytes and serves them as `transact_all` would, returning each completion's
        status, data and time in arrays: no Python object per byte (a `Request`, its
        vector, a `Completion` per byte cost ~3 us of the server's ~7 us per debugcon
        byte in a guest).  Tags are checked there, timeouts and errors raise as in
        `transact_all`, and console bytes reach the sink once per call, also on error.
        On Icarus (the simulator costs far more than the objects): `transact_all`."""
        stream = self._direct_stream
        if stream is None:
            return StreamCompletions.of(
                tag, await self.transact_all(stream_requests(port, data, tag)))
        cpls = await self._stream_direct(stream, port, data, tag)
        await self._device(self._rsp())
        return cpls

    async def _stream_direct(self, stream: Callable[..., int], port: int, data: bytes,
                             tag: int) -> StreamCompletions:
        """`io_write_stream` on Verilator (see there)."""
        if not self.started:
            raise RuntimeError("LockstepEndpoint used before start()")
        dw, be, lane = stream_lane(port)
        Request(Kind.IO_WRITE, dw, be, 0, tag)  # validated as the slow path's requests
        base = (Kind.IO_WRITE << _KIND_LO | dw << _ADDR_LO | be << _BE_LO).to_bytes(
            REQ_BYTES, "little")
        n = len(data)
        if not n:
            return StreamCompletions(tag, b"", array.array("I"), None)
        status = bytearray(n)
        cpl_data = array.array("I", bytes(4 * n))
        times = array.array("Q", bytes(8 * n))
        self._stamps = times
        limit = self.timeout_cycles + _STEP_MARGIN
        con = ctypes.create_string_buffer(n + 2 * RING)  # an I/O write adds a byte at most
        con_len, con_rd = ctypes.c_uint64(), ctypes.c_uint32()
        last, st = ctypes.c_uint64(), ctypes.c_int64()
        status_at = ctypes.addressof((ctypes.c_char * n).from_buffer(status))
        data_at, times_at = cpl_data.buffer_info()[0], times.buffer_info()[0]
        console = bytearray()
        i = 0
        try:
            while i < n:
                con_rd.value = self._con_rd
                done = stream(base, data[i:] if i else data, n - i, lane, (tag + i) & 0xFF,
                              self._seq, status_at + i, data_at + 4 * i, times_at + 8 * i,
                              ctypes.byref(last), con, len(con), ctypes.byref(con_len),
                              ctypes.byref(con_rd), limit, ctypes.byref(st))
                console += con.raw[:con_len.value]
                self._con_rd = con_rd.value
                self._seq ^= done & 1
                self.transactions += done
                self.exchanges += done
                self.direct_steps += done
                i += done
                if done and (last.value >> _TIMED_OUT & 1 or st.value == _STEP_WRONG_TAG):
                    # Formatted only on error: the request of the last one done.
                    req = stream_requests(port, data[i - 1:i], (tag + i - 1) & 0xFF)[0]
                    self._completion(req, last.value)  # raises: a timeout or a wrong tag
                if st.value == _STEP_YIELD:  # request `i` is written: cocotb waits for it
                    req = stream_requests(port, data[i:i + 1], (tag + i) & 0xFF)[0]
                    self._seq ^= 1
                    await self._done
                    rsp = self._rsp()
                    times[i] = sim_steps()
                    con_wr = (rsp >> _CON_WR_LO) & _COUNT_MASK
                    if con_wr != self._con_rd:
                        console += self._take_ring(con_wr)
                    await self._to_falling_edge()  # as in `_exchange`: direct again after
                    self.transactions += 1
                    self.exchanges += 1
                    cpl = self._completion(req, rsp)
                    assert cpl is not None  # an I/O write is not posted
                    status[i], cpl_data[i] = cpl.status, cpl.data
                    i += 1
                elif st.value != _STEP_DONE:
                    why = _STEP_ERRORS.get(st.value, f"unknown status {st.value}")
                    raise RuntimeError(f"cosim_lockstep_stream at byte {i} of {n}: {why}")
                elif not done:  # its console buffer always has room for one request
                    raise RuntimeError(f"cosim_lockstep_stream served none of {n - i} writes")
        finally:
            if console and self._console_sink is not None:
                self._console_sink(bytes(console))
        uniform = None
        if n and status.count(status[0]) == n and cpl_data.count(cpl_data[0]) == n:
            uniform = (_STATUS[status[0]], cpl_data[0])
        return StreamCompletions(tag, status, cpl_data, uniform)

    async def _transact_pair(self, lo: Request, hi: Request) -> tuple[Completion, Completion]:
        rsp = await self._exchange(lo, hi)
        first = self._read_first() if self._direct is None else self._first.value
        await self._device(rsp)
        tag = (first >> _F_TAG) & _TAG_MASK
        if tag != lo.tag:
            raise RuntimeError(f"completion tag {tag} for {lo}")
        lo_cpl = Completion(tag, _STATUS[(first >> _F_STATUS) & _STATUS_MASK], first & _DATA_MASK)
        tag = (rsp >> _TAG) & _TAG_MASK
        if tag != hi.tag:
            raise RuntimeError(f"completion tag {tag} for {hi}")
        return lo_cpl, Completion(tag, _STATUS[(rsp >> _STATUS_LO) & _STATUS_MASK],
                                  rsp & _DATA_MASK)

    def _write_req(self, vec: int, force: bool = False) -> None:
        """Write the words of the request vector that differ from the last written."""
        last = self._req_last
        for i, handle in enumerate(self._req_words):
            word = (vec >> (WORD * i)) & _WORD_MASK
            if force or word != last[i]:
                write_now(handle, word)
                last[i] = word

    def _read_first(self) -> int:
        """The first completion of the last pair, from the `first_w*` ports."""
        return self._read_vector(self._first_words)

    def _rsp(self) -> int:
        return self._read_vector(self._rsp_words)

    def _read_vector(self, handles: Sequence[object]) -> int:
        """The vector whose 32-bit word ports (least significant first) are `handles`."""
        read = self._read_word
        vec = 0
        for i, handle in enumerate(handles):
            vec |= read(handle) << (WORD * i)
        return vec

    def _drain(self, con_wr: int) -> None:
        """Hand the console bytes in the ring to the sink, oldest first; free the ring."""
        data = self._take_ring(con_wr)
        if self._console_sink is not None:
            self._console_sink(data)

    def _take_ring(self, con_wr: int) -> bytes:
        """The console bytes in the ring up to `con_wr`, oldest first; the ring freed."""
        used = (con_wr - self._con_rd) & _COUNT_MASK
        if used > RING:
            raise RuntimeError(f"console ring overrun: {used} bytes for a ring of {RING}")
        ring = int(self._ring.get_signal_val_binstr(), 2)
        data = bytes((ring >> (8 * ((self._con_rd + i) % RING))) & 0xFF for i in range(used))
        self._con_rd = con_wr
        write_now(self._con_rd_h, con_wr)
        return data

    async def drain_console(self) -> None:
        """Let console bytes in flight reach the ring, then hand them to the sink.

        Call at the end of a run and before a reset.  The RTL FIFO (16 bytes) offers a byte
        two cycles after the write that queued it and then one per cycle, so one wait of
        `SETTLE + 2 + RING` cycles lets everything that can arrive arrive; the loop covers
        a ring that filled meanwhile."""
        await self._to_falling_edge()
        for _ in range(4):
            await Timer((SETTLE + 2 + RING) * self.period_ns, "ns")
            con_wr = (self._rsp() >> _CON_WR_LO) & _COUNT_MASK
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
        write_now(gpi(self.dut.rst), 1)
        # The wrapper's inputs, (re)written here: Icarus drops writes made at time 0.
        self._write_req(self._seq << _SEQ, force=True)
        write_now(gpi(self.dut.timeout), self.timeout_cycles)
        write_now(self._con_rd_h, self._con_rd)
        for handle in self._hcpl_words:
            write_now(handle, 0)
        self._hcpl_seq = 0
        await Timer(self.reset_cycles * self.period_ns, "ns")
        write_now(gpi(self.dut.rst), 0)
        self._intx_level(0)  # the reset drops the device's INTx
        log.debug("reset done at %s ns", get_sim_time("ns"))


def _is_pair(lo: Request, hi: Request) -> bool:
    """Two non-posted reads the wrapper can issue as a pair (`lockstep_wrapper.PAIR_STEP`)."""
    return (lo.kind in _READS and hi.kind is lo.kind and hi.addr == lo.addr + _PAIR_ADDR
            and hi.tag == (lo.tag + _PAIR_TAG) & _TAG_MASK and hi.be == lo.be
            and hi.data == lo.data)


def _main_loop_symbol(name: str, argtypes: list[object], restype: object) -> Callable[..., int]:
    """The function `name` the Verilator lock-step main loop exports (verilator_main.cpp,
    built by qbridge.rtl.simbuild with --export-dynamic-symbol), typed for ctypes."""
    try:
        func = getattr(ctypes.CDLL(None), name)
    except AttributeError:
        raise RuntimeError(f"this Verilator build exports no {name}: build it with "
                           "qbridge.rtl.simbuild.build(..., lockstep=True)") from None
    func.argtypes = argtypes
    func.restype = restype
    return func  # type: ignore[no-any-return]


_U64P = ctypes.POINTER(ctypes.c_uint64)
_U32P = ctypes.POINTER(ctypes.c_uint32)
_I64P = ctypes.POINTER(ctypes.c_int64)


def _direct_exchange() -> Callable[[bytes, int, int], int] | None:
    """The Verilator lock-step main loop's `cosim_lockstep_exchange`, or None on Icarus (none)."""
    if not is_two_state():
        return None
    from qbridge.rtl.simbuild import STEP_SYMBOL

    return _main_loop_symbol(STEP_SYMBOL, [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_uint64],
                             ctypes.c_int64)


def _direct_exchange_all() -> Callable[..., int]:
    """The Verilator lock-step main loop's `cosim_lockstep_exchange_all`."""
    from qbridge.rtl.simbuild import BATCH_SYMBOL

    return _main_loop_symbol(BATCH_SYMBOL, [
        ctypes.c_char_p, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
        ctypes.c_uint64, _U64P, _U32P, ctypes.c_uint64, _I64P], ctypes.c_uint64)


def _direct_stream() -> Callable[..., int]:
    """The Verilator lock-step main loop's `cosim_lockstep_stream`."""
    from qbridge.rtl.simbuild import STREAM_SYMBOL

    return _main_loop_symbol(STREAM_SYMBOL, [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32,
        ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, _U64P,
        ctypes.c_char_p, ctypes.c_uint64, _U64P, _U32P, ctypes.c_uint64, _I64P],
        ctypes.c_uint64)


def _direct_service() -> Callable[..., int]:
    """The Verilator lock-step main loop's `cosim_lockstep_service`."""
    from qbridge.rtl.simbuild import SERVICE_SYMBOL

    return _main_loop_symbol(SERVICE_SYMBOL, [
        ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
        ctypes.c_uint32, _U64P, _U64P, ctypes.c_uint64, _I64P], ctypes.c_uint64)


def _steps_per_ns() -> int:
    precision = sim_precision()  # e.g. -12: a step is 1 ps
    if precision > -9:
        raise RuntimeError(f"simulator precision 1e{precision} s is coarser than 1 ns")
    return 10 ** (-9 - precision)


def _long(handle: object) -> int:
    return handle.get_signal_val_long() & _WORD_MASK  # type: ignore[attr-defined]


def _binstr(handle: object) -> int:
    return int(handle.get_signal_val_binstr(), 2)  # type: ignore[attr-defined]
