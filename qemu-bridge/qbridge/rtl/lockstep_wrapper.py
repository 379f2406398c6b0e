"""A sim-only Verilog wrapper around `cosim_top` for the lock-step path (bridge, bench).

Why: through cocotb every signal access and every trigger is a Python <-> simulator
crossing.  The pyuvm-grade agents of `tb.rtl_endpoint` do 6 writes and a RisingEdge per
request beat and a FallingEdge plus reads per completion beat (bench/README.md, profile).
This wrapper does the stream handshakes in HDL, so a transaction costs three crossings:
one write of the packed request vector, one wait for `done` to toggle, one read of the
packed response vector.  The clock is generated inside the wrapper (Icarus: no GPI timer
callback per half period), or, with `COSIM_EXTERNAL_CLOCK` defined, by the simulator's main
loop (Verilator: verilator_main.cpp, no `--timing` scheduler either).  Every wait is
bounded by a watchdog in HDL (no Python timer per transaction).

Everything is derived from `models.contract.transaction` (`REQUEST_FIELDS`, `COMPLETION_FIELDS`,
`CONSOLE_FIELDS`, `Kind`): the port names of `cosim_top` (Amaranth joins with `__`) and
the layouts of the packed vectors, which `lockstep_endpoint` packs and unpacks with the same
`Layout`s.

Ports of `cosim_lockstep` (all sampled/changed at rising edges of the internal clock):
- `req_w0`, `req_w1`, ... (in): the 32-bit words of `req` = `{seq, fields of
  REQUEST_FIELDS in order}`, least significant first: int writes (a VPI integer put, no
  binary string), and only the words that changed (usually the one with `seq` and the
  tag).  All words are written at one simulation time.  Toggling `seq` starts one
  request: the wrapper holds `req__valid` until `req__ready`; a read is done when its
  completion arrives (`cpl__ready` is always 1).  An I/O write (it may emit a console
  byte, which rtl/debugcon.py offers two cycles after its acknowledge) is done `SETTLE`
  cycles after its completion, once `con__valid` is low, so its byte is in the ring by
  then; a memory write (posted: from its acceptance) or a config write `WRITE_SETTLE`
  cycles after, so what it started (a DMA transfer, an interrupt change) shows in `rsp`.
- `svc` (a bit of `req`): a service exchange, no request: the clock runs for the device
  until it holds a request for the host (`dev_pend`) or has been idle for `SVC_QUIET`
  cycles (at least `SVC_MIN`).  The device's requests (`mreq`) are taken one at a time
  into `dreq_w*` (`DREQ_LAYOUT`); starting the next service exchange says the host has
  it.  A device read then waits for the host's completion on `hcpl_w*` (`HCPL_LAYOUT`,
  its `seq` toggled once per completion), offered on `mcpl` until taken.
- `pair` (a bit of `req`): the request is the lower DW of a pair (an 8-byte read): once
  its completion is in, the wrapper issues the second request itself -- the same fields
  with `addr + 4` and `tag + 1` (mod 2^8) -- and `done` toggles after that one.  The
  first completion is on `first_w*`, the second in `rsp` (one Python <-> simulator round
  trip per 8-byte read instead of two; the RTL sees the two requests as before, in order).
- `done` (out): toggles once per request (or pair), on the falling edge after the rising
  edge where its result became ready.
- `rsp_w0`, ... (out): the 32-bit words of `rsp` = `{intx, active, dev_pend, timed_out,
  con_wr, fields of COMPLETION_FIELDS}`: the device's INTx level, whether it works by
  itself (a transfer: the host keeps clocking it with service exchanges), whether it holds
  a request for the host, and the last request's result.
- `first_w0`, ... (out): the first completion of the last pair (`CPL_LAYOUT`).
- `timeout` (in): cycles after which a request that is not done is done with `timed_out`.
- `con_ring` (out) / `con_wr` (in `rsp`) / `con_rd` (in): the console bytes, a ring of
  `RING` bytes; byte k is at bits [8*(k % RING) +: 8].  `con__ready` is high while the
  ring has room (`con_wr - con_rd != RING`), so a full ring back-pressures the RTL's FIFO
  and its I/O writes complete late: bytes are never dropped.
- `rst` (in): the RTL's reset, also clearing the wrapper's handshake state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.contract.transaction import (
    COMPLETION_FIELDS,
    CONSOLE_FIELDS,
    REQUEST_FIELDS,
    Kind,
)

__all__ = [
    "CPL_LAYOUT",
    "DREQ_LAYOUT",
    "HCPL_LAYOUT",
    "MODULE",
    "PAIR_STEP",
    "PORTS_HEADER",
    "PERIOD_NS",
    "REQ_BYTES",
    "REQ_LAYOUT",
    "RING",
    "RSP_LAYOUT",
    "SETTLE",
    "SVC_MIN",
    "SVC_QUIET",
    "WORD",
    "Layout",
    "words",
    "generate",
]

MODULE = "cosim_lockstep"
INNER = "cosim_top"
PERIOD_NS = 10  # the wrapper's clock (qbridge.rtl.simbuild.TIMESCALE is 1ns/1ps)
RING = 16  # console bytes the wrapper holds; the endpoint frees it before it can fill
SETTLE = 2  # (< 16)
WRITE_SETTLE = 4  # (< 16)
COUNT_BITS = 8  # width of con_wr / con_rd (free-running, modulo 256; RING divides 256)
TIMEOUT_BITS = 32
WORD = 32  # port width: cocotb writes and reads up to 32 bits as integers


def words(width: int) -> list[int]:
    """Widths of the 32-bit word ports a `width`-bit vector is split into, LSB first."""
    return [min(WORD, width - lo) for lo in range(0, width, WORD)]


@dataclass(frozen=True)
class Layout:
    """Fields packed MSB-first in the given order into one vector (Verilog concatenation)."""

    fields: tuple[tuple[str, int], ...]

    @property
    def width(self) -> int:
        return sum(w for _, w in self.fields)

    def offset(self, name: str) -> int:
        """Bit position of the field's LSB."""
        pos = self.width
        for n, w in self.fields:
            pos -= w
            if n == name:
                return pos
        raise KeyError(name)


REQ_LAYOUT = Layout((("seq", 1), ("svc", 1), ("pair", 1), *REQUEST_FIELDS.items()))
# How the second request of a pair differs from the first (all other fields are equal).
PAIR_STEP = {"addr": 4, "tag": 1}
CPL_LAYOUT = Layout(tuple(COMPLETION_FIELDS.items()))
RSP_LAYOUT = Layout((("intx", 1), ("active", 1), ("dev_pend", 1), ("timed_out", 1),
                     ("con_wr", COUNT_BITS), *COMPLETION_FIELDS.items()))
# The device's own request as the wrapper holds it for the host (`dreq_w*`) and the
# completion the host hands back for a device read (`hcpl_w*`, `seq` toggling once each).
DREQ_LAYOUT = Layout(tuple(REQUEST_FIELDS.items()))
HCPL_LAYOUT = Layout((("seq", 1), *COMPLETION_FIELDS.items()))
# A service exchange runs at least this many cycles, then until the device has been idle
# for SVC_QUIET of them (a register write's effect -- a transfer starting, the interrupt
# changing -- shows within a few cycles of its acceptance).
SVC_MIN = 4
SVC_QUIET = 2


def _ports(prefix: str, fields: dict[str, int]) -> list[str]:
    return [f"{prefix}__{name}" for name in fields]


def _decl(width: int) -> str:
    return f"[{width - 1}:0] " if width > 1 else ""


def render(period_ns: int = PERIOD_NS) -> str:
    """The wrapper's Verilog text (Verilog-2005; Verilator needs `--timing` for the clock)."""
    if period_ns <= 0 or period_ns % 2:
        raise ValueError(f"Clock period must be a positive even number of ns, not {period_ns!r}")
    con_width = CONSOLE_FIELDS["data"]
    if con_width != 8 or len(CONSOLE_FIELDS) != 1:
        raise ValueError(f"The console ring holds bytes; CONSOLE_FIELDS is {CONSOLE_FIELDS}")
    pub = "/*verilator public_flat_rw*/"
    req_w, rsp_w, cpl_w = REQ_LAYOUT.width, RSP_LAYOUT.width, CPL_LAYOUT.width
    seq = REQ_LAYOUT.offset("seq")
    pair = REQ_LAYOUT.offset("pair")
    kind_lo = REQ_LAYOUT.offset("kind")
    kind_w = REQUEST_FIELDS["kind"]
    wires = []
    conns = [".clk(clk)", ".rst(rst)"]
    for name, width in REQUEST_FIELDS.items():
        lo = REQ_LAYOUT.offset(name)
        field = f"req[{lo + width - 1}:{lo}]"
        if name in PAIR_STEP:  # the second request of a pair: this field stepped
            field = f"second ? {field} + {width}'d{PAIR_STEP[name]} : {field}"
        wires.append(f"  wire {_decl(width)}req__{name} = {field};")
    for name, width in COMPLETION_FIELDS.items():
        wires.append(f"  wire {_decl(width)}cpl__{name};")
    wires.append(f"  wire {_decl(con_width)}con__data;")
    wires.append("  wire req__ready, cpl__valid, con__valid;")
    for port in [*_ports("req", REQUEST_FIELDS), *_ports("cpl", COMPLETION_FIELDS),
                 "req__valid", "req__ready", "cpl__valid", "cpl__ready",
                 "con__valid", "con__ready", "con__data"]:
        conns.append(f".{port}({port})")
    # The device's requester side: one request held for the host (`dreq`), the host's
    # completion for a device read offered back on `mcpl`.
    for name, width in REQUEST_FIELDS.items():
        wires.append(f"  wire {_decl(width)}mreq__{name};")
    wires.append("  wire mreq__valid, mreq__ready, mcpl__ready, dut_intx, dut_active;")
    for name, width in COMPLETION_FIELDS.items():
        lo = HCPL_LAYOUT.offset(name)
        wires.append(f"  wire {_decl(width)}mcpl__{name} = hcpl[{lo + width - 1}:{lo}];")
    for port in [*_ports("mreq", REQUEST_FIELDS), *_ports("mcpl", COMPLETION_FIELDS),
                 "mreq__valid", "mreq__ready", "mcpl__valid", "mcpl__ready"]:
        conns.append(f".{port}({port})")
    conns += [".intx(dut_intx)", ".active(dut_active)"]
    dreq_w, hcpl_w = DREQ_LAYOUT.width, HCPL_LAYOUT.width
    dreq_cat = ", ".join(_ports("mreq", REQUEST_FIELDS))
    hcpl_seq = HCPL_LAYOUT.offset("seq")
    dreq_words, hcpl_words = words(dreq_w), words(hcpl_w)
    dreq_ports = ", ".join(f"dreq_w{i}" for i in range(len(dreq_words)))
    hcpl_ports = ", ".join(f"hcpl_w{i}" for i in range(len(hcpl_words)))
    dreq_decls = "\n".join(f"  output {_decl(w)}dreq_w{i} {pub};"
                           for i, w in enumerate(dreq_words))
    hcpl_decls = "\n".join(f"  input {_decl(w)}hcpl_w{i} {pub};"
                           for i, w in enumerate(hcpl_words))
    dreq_assigns = "\n".join(f"  assign dreq_w{i} = dreq_q[{WORD * i + w - 1}:{WORD * i}];"
                             for i, w in enumerate(dreq_words))
    hcpl_cat = ", ".join(f"hcpl_w{i}" for i in reversed(range(len(hcpl_words))))
    svc = REQ_LAYOUT.offset("svc")
    cpl_cat = ", ".join(_ports("cpl", COMPLETION_FIELDS))
    posted = " || ".join(f"kind == {k.value}" for k in Kind if k.posted) or "1'b0"
    half = period_ns // 2
    req_words, rsp_words = words(req_w), words(rsp_w)
    req_ports = ", ".join(f"req_w{i}" for i in range(len(req_words)))
    rsp_ports = ", ".join(f"rsp_w{i}" for i in range(len(rsp_words)))
    req_decls = "\n".join(f"  input {_decl(w)}req_w{i} {pub};" for i, w in enumerate(req_words))
    rsp_decls = "\n".join(f"  output {_decl(w)}rsp_w{i} {pub};"
                          for i, w in enumerate(rsp_words))
    req_cat = ", ".join(f"req_w{i}" for i in reversed(range(len(req_words))))
    rsp_assigns = "\n".join(
        f"  assign rsp_w{i} = rsp[{WORD * i + w - 1}:{WORD * i}];" for i, w in enumerate(rsp_words))
    first_words = words(cpl_w)
    first_ports = ", ".join(f"first_w{i}" for i in range(len(first_words)))
    first_decls = "\n".join(f"  output {_decl(w)}first_w{i} {pub};"
                            for i, w in enumerate(first_words))
    first_assigns = "\n".join(f"  assign first_w{i} = first_q[{WORD * i + w - 1}:{WORD * i}];"
                              for i, w in enumerate(first_words))
    return f"""// Generated by qbridge.rtl.lockstep_wrapper from the layouts: do not edit.
// Sim-only lock-step wrapper of {INNER} (see that module's docstring).
`timescale 1ns/1ps
module {MODULE}(
`ifdef COSIM_EXTERNAL_CLOCK
  clk,
`endif
  rst, {req_ports}, timeout, con_rd, done, {rsp_ports}, {first_ports}, con_ring,
  {dreq_ports}, {hcpl_ports}, stream, dev_new);
  input rst {pub};
  input stream {pub};  // the main loop samples every write (`dev_new`): none is held
  output reg dev_new {pub};
{req_decls}
{hcpl_decls}
{dreq_decls}
  input [{TIMEOUT_BITS - 1}:0] timeout {pub};
  input [{COUNT_BITS - 1}:0] con_rd {pub};
  output reg done {pub};
{rsp_decls}
{first_decls}
  output reg [{RING * 8 - 1}:0] con_ring {pub};

`ifdef COSIM_EXTERNAL_CLOCK
  input clk;  // toggled by the simulator's main loop (verilator_main.cpp), same phase
`else
  reg clk = 1'b0;
  always #{half} clk = ~clk;  // period {period_ns} ns, first rising edge at {half} ns
`endif

  wire [{req_w - 1}:0] req = {{{req_cat}}};
  wire [{hcpl_w - 1}:0] hcpl = {{{hcpl_cat}}};
  reg second = 1'b0;    // serving the second request of a pair
{chr(10).join(wires)}
  reg pend = 1'b0;      // the request is offered and was not accepted yet
  reg want = 1'b0;      // accepted, waiting for its completion
  reg tail = 1'b0;      // an I/O write settling: console bytes still on their way
  reg seen = 1'b0;      // seq of the last request started
  reg timed_out = 1'b0;
  reg rst_q = 1'b1;
  reg [3:0] quiet = 4'd0;
  reg [{TIMEOUT_BITS - 1}:0] age = {TIMEOUT_BITS}'d0;
  reg [{cpl_w - 1}:0] cpl_q = {cpl_w}'d0;
  reg [{cpl_w - 1}:0] first_q = {cpl_w}'d0;  // the first completion of a pair
  reg [{COUNT_BITS - 1}:0] con_wr = {COUNT_BITS}'d0;
  // The device's requester side (docs/dma.md, "Lock-step"): a request of the device is
  // held in `dreq_q` (`dev_pend`) until a service exchange starts, which is when the
  // host has taken it; a read then waits (`dev_read`) for the host's completion, which
  // arrives on `hcpl` with its seq toggled and is offered on `mcpl` until taken.
  reg dev_pend = 1'b0;
  reg dev_read = 1'b0;
  reg hcpl_seen = 1'b0;
  reg svcing = 1'b0;    // a service exchange: no request, the clock runs for the device
  reg [3:0] svc_age = 4'd0;
  reg [3:0] svc_idle = 4'd0;
  reg [{dreq_w - 1}:0] dreq_q = {dreq_w}'d0;
  wire hcpl_in = hcpl[{hcpl_seq}] === 1'b1;
  wire hcpl_offer = !rst_q && dev_read && hcpl_in != hcpl_seen;
  assign mcpl__valid = hcpl_offer;
  assign mreq__ready = !rst_q && !dev_pend && !dev_read;
  wire dev_take = mreq__valid && mreq__ready;
  // Streaming (a service exchange of verilator_main.cpp's cosim_lockstep_service): a
  // memory write is taken every cycle the device offers one, flagged by `dev_new` for
  // one cycle, and read from `dreq` by the main loop at that rising edge.
  wire dev_write = mreq__kind == {REQUEST_FIELDS["kind"]}'d{Kind.MEM_WRITE.value};
  wire streamed = svcing && stream === 1'b1 && dev_write;
  initial dev_new = 1'b0;
  // The device works on without host input: the lock-step host keeps clocking it.
  wire active = dut_active | dev_read | dev_pend;
  // `req` is held by the endpoint until `done`: its fields are valid for the whole request.
  wire [{kind_w - 1}:0] kind = req[{kind_lo + kind_w - 1}:{kind_lo}];
  wire posted = {posted};
  wire io_write = kind == {Kind.IO_WRITE.value};
  wire cfg_write = kind == {Kind.CFG_WRITE.value};
  // How long a write settles before it is done: an I/O write until its console byte is
  // in the ring; a memory or config write until what it started shows on the device's
  // side (`active`, `intx`), so the response tells the host whether to keep clocking.
  wire [3:0] settle = io_write ? 4'd{SETTLE - 1} : 4'd{WRITE_SETTLE - 1};
  wire seq_in = req[{seq}] === 1'b1;  // an undriven (Z) input counts as 0
  wire pair = req[{pair}] === 1'b1;
  wire svc_req = req[{svc}] === 1'b1;
  wire busy = pend | want | tail | svcing;
  // A new request is offered in the cycle its seq toggle is seen (no cycle lost), and
  // its completion is taken even in the cycle the request is accepted.
  // (`rst` registered: Icarus does not propagate a VPI write of a top-level input net to
  // continuous assignments, only to processes reading it.)
  wire start = !rst_q && !busy && seq_in != seen;
  wire offered = pend | (start & !svc_req);
  wire accepted = offered & req__ready;
  wire got_cpl = (want | (accepted & !posted)) & cpl__valid;
  wire [{COUNT_BITS - 1}:0] con_used = con_wr - con_rd;

  assign req__valid = offered;
  assign cpl__ready = 1'b1;
  assign con__ready = con_used != {COUNT_BITS}'d{RING};
  wire [{rsp_w - 1}:0] rsp = {{dut_intx, active, dev_pend, timed_out, con_wr, cpl_q}};
{rsp_assigns}
{first_assigns}
{dreq_assigns}

  // `done` follows the internal toggle at the next falling edge: everything that changed at
  // the rising edge (the response, its continuous assignments) has settled by then, in
  // every simulator (Icarus runs a value-change callback as soon as the NBA that caused
  // it is applied, before later updates of the same time step), and the endpoint's writes
  // land half a period away from any rising edge.
  reg done_r = 1'b0;
  initial done = 1'b0;
  always @(negedge clk) done <= done_r;
  initial con_ring = {RING * 8}'d0;

  {INNER} dut({", ".join(conns)});

  always @(posedge clk) begin
    // The console ring takes a byte whenever it has room (independent of requests).
    if (con__valid && con__ready) begin
      con_ring[8 * con_wr[{(RING - 1).bit_length() - 1}:0] +: 8] <= con__data;
      con_wr <= con_wr + 1'b1;
    end
    rst_q <= rst;
    if (rst) begin
      dev_pend <= 1'b0;
      dev_read <= 1'b0;
      svcing <= 1'b0;
      hcpl_seen <= hcpl_in;
      dev_new <= 1'b0;
    end else begin
      dev_new <= dev_take && streamed;
      if (dev_take) begin
        dreq_q <= {{{dreq_cat}}};
        if (!streamed) begin
          dev_pend <= 1'b1;
          dev_read <= mreq__kind == {REQUEST_FIELDS["kind"]}'d{Kind.MEM_READ.value};
        end
      end else if (start && svc_req) dev_pend <= 1'b0;  // the host has taken it
      if (hcpl_offer && mcpl__ready) begin
        dev_read <= 1'b0;
        hcpl_seen <= hcpl_in;
      end
    end
    if (rst) begin
      pend <= 1'b0;
      want <= 1'b0;
      tail <= 1'b0;
      second <= 1'b0;
      seen <= seq_in;
    end else begin
      if (start) begin
        seen <= seq_in;
        timed_out <= 1'b0;
        age <= {TIMEOUT_BITS}'d1;
        if (svc_req) begin
          svcing <= 1'b1;
          svc_age <= 4'd0;
          svc_idle <= 4'd0;
        end
      end else if (busy) age <= age + 1'b1;
      if (svcing && !start) begin
        if (svc_age != 4'd15) svc_age <= svc_age + 1'b1;
        svc_idle <= active ? 4'd0 : svc_idle + (svc_idle != 4'd15);
      end
      if (busy && age >= timeout) begin
        pend <= 1'b0;
        want <= 1'b0;
        tail <= 1'b0;
        second <= 1'b0;
        svcing <= 1'b0;
        timed_out <= 1'b1;
        done_r <= ~done_r;
      end else if (svcing) begin
        // Done when the device has a request for the host, or has been idle long enough.
        if (!start && (dev_pend || (dev_take && !streamed)
                       || (svc_age >= 4'd{SVC_MIN} && svc_idle >= 4'd{SVC_QUIET}))) begin
          svcing <= 1'b0;
          done_r <= ~done_r;
        end
      end else if (offered && !req__ready) begin
        pend <= 1'b1;
      end else if (accepted && posted) begin
        pend <= 1'b0;
        quiet <= 4'd0;
        tail <= 1'b1;
      end else if (got_cpl && pair && !second) begin
        // The first of a pair: keep its completion, offer the second from the next cycle.
        want <= 1'b0;
        first_q <= {{{cpl_cat}}};
        second <= 1'b1;
        pend <= 1'b1;
      end else if (got_cpl) begin
        pend <= 1'b0;
        want <= 1'b0;
        second <= 1'b0;
        cpl_q <= {{{cpl_cat}}};
        quiet <= 4'd0;
        if (io_write || cfg_write) tail <= 1'b1;
        else done_r <= ~done_r;
      end else if (accepted) begin
        pend <= 1'b0;
        want <= 1'b1;
      end else if (tail) begin
        if (con__valid) quiet <= 4'd0;
        else if (quiet == settle) begin
          tail <= 1'b0;
          done_r <= ~done_r;
        end else quiet <= quiet + 1'b1;
      end
    end
  end
endmodule
"""


def render_ports_header() -> str:
    """The C header `verilator_main.cpp` includes for `cosim_lockstep_exchange(_all)`: how
    the packed vectors map onto the wrapper's word ports, and the console ring's ports
    (the layouts and constants above, nothing else).

    The request arrives as the little-endian bytes of `req` (`REQ_BYTES`); the response
    and the first completion of a pair are returned as 64-bit integers, so they must fit
    in 63 bits (a negative return is a status)."""
    for layout in (RSP_LAYOUT, CPL_LAYOUT):
        if layout.width > 63:
            raise ValueError(f"{layout} is {layout.width} bits; the C side returns 63")
    req_words = len(words(REQ_LAYOUT.width))

    def join(prefix: str, width: int) -> str:
        return " | ".join(f"(uint64_t)(top)->{prefix}{i} << {WORD * i}"
                          for i in range(len(words(width))))

    sets = " ".join(f"(top)->req_w{i} = (w)[{i}];" for i in range(req_words))
    dreq_gets = " ".join(f"(w)[{i}] = (top)->dreq_w{i};"
                         for i in range(len(words(DREQ_LAYOUT.width))))
    # Byte k of `con_ring`: Verilator holds a port wider than 64 bits as 32-bit words.
    if RING * 8 > 64:
        ring_byte = "(((top)->con_ring[(k) / 4] >> (8 * ((k) % 4))) & 0xffu)"
    else:
        ring_byte = "((unsigned)((uint64_t)(top)->con_ring >> (8 * (k))) & 0xffu)"
    count_mask = (1 << COUNT_BITS) - 1
    con_wr, timed_out = RSP_LAYOUT.offset("con_wr"), RSP_LAYOUT.offset("timed_out")
    rsp_fields = dict(RSP_LAYOUT.fields)
    return f"""// Generated by qbridge.rtl.lockstep_wrapper from the layouts: do not edit.
// The ports of {MODULE} as packed vectors, for verilator_main.cpp.
#define COSIM_LEAN_REQ_WORDS {req_words}
#define COSIM_LEAN_SET_REQ(top, w) do {{ {sets} }} while (0)
#define COSIM_LEAN_RSP(top) ({join("rsp_w", RSP_LAYOUT.width)})
#define COSIM_LEAN_FIRST(top) ({join("first_w", CPL_LAYOUT.width)})
// The console ring (cosim_lockstep_exchange_all frees it after every request).
#define COSIM_LEAN_RING {RING}
#define COSIM_LEAN_COUNT_MASK {count_mask}u
#define COSIM_LEAN_CON_WR(rsp) ((unsigned)((rsp) >> {con_wr}) & COSIM_LEAN_COUNT_MASK)
#define COSIM_LEAN_TIMED_OUT(rsp) ((unsigned)((rsp) >> {timed_out}) & 1u)
#define COSIM_LEAN_RING_BYTE(top, k) {ring_byte}
#define COSIM_LEAN_SET_CON_RD(top, v) ((top)->con_rd = (v))
// Request and response fields, for cosim_lockstep_stream (which builds its requests).
#define COSIM_LEAN_REQ_SEQ_LO {REQ_LAYOUT.offset("seq")}
#define COSIM_LEAN_REQ_TAG_LO {REQ_LAYOUT.offset("tag")}
#define COSIM_LEAN_REQ_DATA_LO {REQ_LAYOUT.offset("data")}
#define COSIM_LEAN_RSP_TAG(rsp) ((unsigned)((rsp) >> {RSP_LAYOUT.offset("tag")}) & \
{(1 << rsp_fields["tag"]) - 1}u)
#define COSIM_LEAN_RSP_STATUS(rsp) ((unsigned)((rsp) >> {RSP_LAYOUT.offset("status")}) & \
{(1 << rsp_fields["status"]) - 1}u)
#define COSIM_LEAN_RSP_DATA(rsp) ((uint32_t)((rsp) >> {RSP_LAYOUT.offset("data")}))
// The device's side, for cosim_lockstep_service.
#define COSIM_LEAN_REQ_SVC_LO {REQ_LAYOUT.offset("svc")}
#define COSIM_LEAN_RSP_DEV_PEND(rsp) ((unsigned)((rsp) >> {RSP_LAYOUT.offset("dev_pend")}) & 1u)
#define COSIM_LEAN_RSP_ACTIVE(rsp) ((unsigned)((rsp) >> {RSP_LAYOUT.offset("active")}) & 1u)
#define COSIM_LEAN_DREQ_WORDS {len(words(DREQ_LAYOUT.width))}
#define COSIM_LEAN_GET_DREQ(top, w) do {{ {dreq_gets} }} while (0)
#define COSIM_LEAN_DREQ_KIND_LO {DREQ_LAYOUT.offset("kind")}
#define COSIM_LEAN_DREQ_TAG_LO {DREQ_LAYOUT.offset("tag")}
#define COSIM_LEAN_DREQ_ADDR_LO {DREQ_LAYOUT.offset("addr")}
#define COSIM_LEAN_DREQ_BE_LO {DREQ_LAYOUT.offset("be")}
#define COSIM_LEAN_DREQ_DATA_LO {DREQ_LAYOUT.offset("data")}
#define COSIM_LEAN_KIND_MEM_WRITE {Kind.MEM_WRITE.value}u
"""


REQ_BYTES = len(words(REQ_LAYOUT.width)) * WORD // 8
PORTS_HEADER = f"{MODULE}_ports.h"


def generate(out_dir: Path, period_ns: int = PERIOD_NS) -> Path:
    """Write `out_dir/cosim_lockstep.v` and its C header `PORTS_HEADER` (each only rewritten
    when changed); return the Verilog's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(out_dir / PORTS_HEADER, render_ports_header())
    path = out_dir / f"{MODULE}.v"
    _write_if_changed(path, render(period_ns))
    return path


def _write_if_changed(path: Path, text: str) -> None:
    """Replace `path` atomically, and only when its text changes (builds are incremental)."""
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f"{path.name}.tmp{id(text)}")
        tmp.write_text(text)
        tmp.replace(path)
