"""The transport-neutral core of the device server.

    core = DeviceCore(endpoint, transport, debugcon)
    await core.serve()        # until the transport's peer (QEMU) closes

The core owns what every transport shares: the backend (`BridgeEndpoint`: the golden
model or the RTL), the one `Host` read/write API over it, the transaction log, the
debugcon byte stream (QEMU's `isa-debugcon` chardev socket: each byte an I/O write of
port 0xe9), the serve loop and its lifecycle and errors.  A transport (`Transport`:
x-pci-proxy-dev in `qbridge.proxy`, vfio-user beside it) turns its peer's messages into
`core.host` calls and `core.reset()`; it knows nothing of backends or debugcon.

`serve()` is lock-step and deliberately free of asyncio primitives: it blocks in
`select.poll` (bounded timeout) while QEMU is idle and only `await`s the backend.  Under
asyncio that is harmless (nothing else runs); inside a cocotb coroutine it freezes
simulated time while idle, so a VM run against the RTL is deterministic
(docs/bridge-protocol.md, "Lock-step serving").
"""

from __future__ import annotations

import array
import fcntl
import itertools
import logging
import select
import socket
import termios
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol, TextIO

from models.contract.regmap import (
    BAR0_SIZE,
    CONFIG_DWORDS,
    DEBUGCON_PORT,
    MSI_CAP,
    STEP_MARK,
    STEP_MARK_SIZE,
    rng_register_at,
)
from models.contract.transaction import (
    Completion,
    Endpoint,
    Host,
    HostPort,
    Kind,
    Request,
    Status,
    StreamCompletions,
    io_write_stream,
    stream_lane,
    transact_all,
)
from qbridge.guest_host import GuestBus, GuestHost

__all__ = [
    "BridgeEndpoint",
    "DeviceCore",
    "ProtocolError",
    "Transport",
    "TxLogEndpoint",
]

log = logging.getLogger("cosim.bridge")

IDLE_POLL_S = 0.5  # bounded idle wait: peers closing and stop requests are noticed
MESSAGE_TIMEOUT_S = 10.0  # a started message must complete, a reply must leave, in this
DRAIN_QUIET_S = 0.2  # at shutdown, debugcon bytes still in flight arrive within this
# What one recv() takes from the debugcon socket at most: one batch for the backend
# (`Host.io_write_each`).  64 KiB: more than QEMU queues between two reads of a busy
# server (its per-byte sends fill the socket buffer after a few hundred bytes), and on
# Icarus, the slowest backend, a few seconds of simulation before the next poll.
DEBUGCON_CHUNK = 64 * 1024
_DONTWAIT = int(socket.MSG_DONTWAIT)  # an int: IntFlag operations are slow per access


class ProtocolError(Exception):
    """The peer sent something its protocol never allows: the connection cannot continue."""


class BridgeEndpoint(Endpoint, Protocol):
    """What the device server needs of a backend (the golden model, the RTL).

    `transact`/`reset` as every `Endpoint`; `transact_all` hands requests that belong
    together (an 8-byte read's two DWs) over at once; `drain_console` lets console bytes
    still inside the device reach its sink (called before the run ends); `host` is where
    the device's own requests and interrupt go (the core sets it to the guest)."""

    host: HostPort

    async def transact_all(self, reqs: Sequence[Request]) -> list[Completion | None]: ...

    async def drain_console(self) -> None: ...


class Transport(GuestBus, Protocol):
    """One QEMU device protocol, adapted to the core; as a `GuestBus` it is also the way
    the device's DMA and interrupt reach the guest."""

    name: str

    def fileno(self) -> int:
        """The connected socket the core polls for input."""
        ...

    async def on_readable(self, core: DeviceCore) -> bool:
        """Handle what arrived (at least one whole message); False when the peer closed
        the connection between messages (the normal end)."""
        ...

    def close(self) -> None:
        """Close every fd the transport received (not the socket it was given)."""
        ...


class TxLogEndpoint:
    """An endpoint wrapper writing one line per transaction (and per reset) to `out`.

    Every line is `<host time> <simulation time> <guest step> <transaction>`:
    - host time: UTC wall clock with microseconds, when the line's request was answered
      (a batch shares the time it ended), to line up with the guest's serial log and the
      QEMU log;
    - simulation time: `now()` if given (the RTL backend's, "<n>ns"), per request of a
      batch by `batch_stamps()` (the time each was done), else "-" (the model has none);
    - guest step: the name the guest last wrote to the config window STEP_MARK
      (models/contract/regmap.py), "boot" before the first: what the guest was doing;
    - the transaction: `str(Request)`, the register it reaches in brackets (`_Names`),
      then the completion or "posted".  The device's own requests start with `DEV`.

    A `transact_all` batch is written as one string (a debugcon burst is thousands of
    lines).  Lines are written through at most `flush_after` seconds late (`flush_if_due`,
    which the core calls after every message and when idle), and at `close`: a flush per
    line was a third of a guest read's cost (bench/README.md).  A process killed outright
    loses at most that window.

    `io_write_stream` (the debugcon stream) writes the same lines as `transact_all` of
    its requests would, from precomputed pieces per tag and byte value instead of
    formatting a `Request` and a `Completion` per byte (`_stream_pieces`).
    """

    HEADER = ("# host time (UTC), simulation time (- without one), guest step, request "
              "[register] -> completion\n")

    def __init__(self, inner: BridgeEndpoint, out: TextIO,
                 now: Callable[[], str] | None = None, flush_after: float = 0.05,
                 batch_stamps: Callable[[], Sequence[str]] | None = None) -> None:
        self.inner = inner
        self._out = out
        self._now = now
        self._batch_stamps = batch_stamps
        self.flush_after = flush_after
        self._dirty_since: float | None = None
        self._names = _Names()
        self._clock = _HostClock()
        out.write(self.HEADER)

    def _prefix(self) -> str:
        """The columns before the transaction, for a line written now."""
        sim = self._now() if self._now is not None else "-"
        return f"{self._clock.stamp()} {sim} {self._names.step} "

    def _line(self, text: str) -> None:
        self._out.write(self._prefix() + text + "\n")
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()

    @property
    def pending(self) -> bool:
        """Lines written since the last flush."""
        return self._dirty_since is not None

    def flush_if_due(self, now: float) -> None:
        if self._dirty_since is not None and now - self._dirty_since >= self.flush_after:
            self.flush()

    def flush(self) -> None:
        self._out.flush()
        self._dirty_since = None

    @property
    def host(self) -> HostPort:
        return self.inner.host

    @host.setter
    def host(self, host: HostPort) -> None:
        """The device's requests are logged too, marked `DEV` (the device is the
        requester), in the order the device issued them."""
        self.inner.host = _TxLogHost(host, self._line, self._names)

    async def transact(self, req: Request) -> Completion | None:
        cpl = await self.inner.transact(req)
        name = self._names.guest(req, cpl)
        self._line(f"{req} [{name}] -> {cpl if cpl is not None else 'posted'}")
        return cpl

    async def transact_all(self, reqs: Sequence[Request]) -> list[Completion | None]:
        """Hands `reqs` on together (models.contract.transaction.transact_all), a line
        each, written at once."""
        cpls = await transact_all(self.inner, reqs)
        names = self._names
        self._write_batch([f"{req} [{names.guest(req, cpl)}] -> "
                           f"{cpl if cpl is not None else 'posted'}\n"
                           for req, cpl in zip(reqs, cpls, strict=True)])
        return cpls

    async def io_write_stream(self, port: int, data: bytes, tag: int) -> StreamCompletions:
        """`stream_requests(port, data, tag)` handed on (the inner endpoint's
        `io_write_stream`, else its `transact_all`), a line each, written at once."""
        cpls = await io_write_stream(self.inner, port, data, tag)
        n = len(data)
        if not n:
            return cpls
        tail = None
        if cpls.uniform is not None:
            status, cpl_data = cpls.uniform
            tail = f"{_STATUS_NAMES[status]} data={cpl_data:#010x}\n"
        dw, be, lane = stream_lane(port)
        left, mid, right = _stream_pieces(dw, be, lane, tail, self._names.io(dw))
        tags = itertools.islice(itertools.cycle(range(256)), tag, tag + n)
        if tail is not None:
            lines = [left[t] + mid[b] + right[t] for t, b in zip(tags, data, strict=True)]
        else:  # completions differ (not the debugcon's): each formatted as it is
            lines = [f"{left[t]}{mid[b]}{right[t]}{cpls.completion(i).status.name} "
                     f"data={cpls.data[i]:#010x}\n"
                     for i, (t, b) in enumerate(zip(tags, data, strict=True))]
        self._write_batch(lines)
        return cpls

    def _write_batch(self, lines: list[str]) -> None:
        """A batch's lines in one write, each stamped: by the inner endpoint's stamp per
        request of its last batch when it has them, else by `now()` per line."""
        if not lines:
            return
        host = f"{self._clock.stamp()} "
        step = f" {self._names.step} "
        if self._now is not None:
            stamps = self._batch_stamps() if self._batch_stamps is not None else ()
            if len(stamps) != len(lines):
                stamps = [self._now() for _ in lines]
            lines = [f"{host}{stamp}{step}{line}"
                     for stamp, line in zip(stamps, lines, strict=True)]
        else:
            prefix = f"{host}-{step}"
            lines = [prefix + line for line in lines]
        self._out.write("".join(lines))
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()

    async def reset(self) -> None:
        await self.inner.reset()
        self._names.reset()
        self._line("RESET")
        self.flush()

    async def drain_console(self) -> None:
        await self.inner.drain_console()


_STATUS_NAMES = {s: s.name for s in Status}
_FULL_DW = 0xF
_BAR0_DW = 0x10
_MSI_ADDRESS, _MSI_ADDRESS_HI = MSI_CAP + 0x4, MSI_CAP + 0x8
_STEP_MARK_LAST = STEP_MARK + STEP_MARK_SIZE - 4  # its write completes a marker


def _byte_mask(be: int) -> int:
    return sum(0xFF << (8 * i) for i in range(4) if be >> i & 1)


class _Names:
    """What the txlog calls each request: the register it reaches, by the one register
    map (models/contract/regmap.py), and the guest step it belongs to.

    The log sees every config write, so it follows the config DWs that give names their
    meaning, with the device's own write masks: BAR0 (where BAR0's registers are), the MSI
    address (which device write is the interrupt), and the STEP_MARK window, whose last
    DW completes the name of the guest's next step.  A config write the device refused
    (a completion other than SC) changes nothing.  Names of guest requests are cached per
    (kind, address) until BAR0 moves: a guest read costs one dict lookup more.
    """

    def __init__(self) -> None:
        self.reset()
        self.step = "boot"

    def reset(self) -> None:
        """A device reset: config space is back at its reset values (the step stays:
        the guest is still in it)."""
        self._cfg = {off: dw.reset for off, dw in CONFIG_DWORDS.items()}
        self._mark = bytearray(STEP_MARK_SIZE)
        self._cache: dict[tuple[Kind, int], str] = {}

    def guest(self, req: Request, cpl: Completion | None) -> str:
        """The name of guest request `req` (answered by `cpl`), after noting what a
        config write changes."""
        kind = req.kind
        if kind is Kind.CFG_WRITE and (cpl is None or cpl.status is Status.SC):
            self._cfg_write(req)
        key = (kind, req.addr)
        name = self._cache.get(key)
        if name is None:
            name = self._cache[key] = self._guest_name(kind, req.addr)
        return name

    def device(self, req: Request) -> str:
        """The name of the device's own memory request `req`."""
        msi = self._cfg[_MSI_ADDRESS_HI] << 32 | self._cfg[_MSI_ADDRESS]
        if req.kind is Kind.MEM_WRITE and msi and req.addr == msi:
            return "MSI"
        return "host memory"

    def io(self, dw: int) -> str:
        return "DEBUGCON" if dw == DEBUGCON_PORT & ~3 else "unclaimed"

    def _guest_name(self, kind: Kind, addr: int) -> str:
        if kind in (Kind.CFG_READ, Kind.CFG_WRITE):
            dw = CONFIG_DWORDS.get(addr)
            if dw is not None:
                return dw.name
            if STEP_MARK <= addr < STEP_MARK + STEP_MARK_SIZE:
                return "STEP_MARK"
            return f"CFG+{addr:#x}"
        if kind in (Kind.IO_READ, Kind.IO_WRITE):
            return self.io(addr)
        bar0 = self._cfg[_BAR0_DW] & ~(BAR0_SIZE - 1)
        offset = addr - bar0
        if not bar0 or not 0 <= offset < BAR0_SIZE:
            return "unclaimed"
        reg = rng_register_at(offset)
        if reg is None:
            return f"BAR0+{offset:#x}"
        return reg.name if offset == reg.offset else f"{reg.name}+{offset - reg.offset}"

    def _cfg_write(self, req: Request) -> None:
        addr, mask = req.addr, _byte_mask(req.be)
        dw = CONFIG_DWORDS.get(addr)
        if dw is not None:
            keep = mask & dw.writable
            self._cfg[addr] = self._cfg[addr] & ~keep | req.data & keep
            if addr == _BAR0_DW:
                self._cache.clear()
        elif STEP_MARK <= addr < STEP_MARK + STEP_MARK_SIZE:
            at = addr - STEP_MARK
            old = int.from_bytes(self._mark[at:at + 4], "little")
            self._mark[at:at + 4] = (old & ~mask | req.data & mask).to_bytes(4, "little")
            if addr == _STEP_MARK_LAST and req.be & 0x8:
                self.step = _step_name(bytes(self._mark))


def _step_name(raw: bytes) -> str:
    """A marker's bytes as a step name: printable ASCII, spaces and NULs trimmed, other
    bytes as '?', so the column stays one word."""
    text = "".join(chr(b) if 0x21 <= b < 0x7F else " " if b in (0, 0x20) else "?"
                   for b in raw).strip()
    return text.replace(" ", "_") or "?"


class _HostClock:
    """The host time of day (UTC) as `HH:MM:SS.uuuuuu`, formatting the seconds part once
    per second (a guest read's line would otherwise pay for `strftime`)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def stamp(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%H:%M:%S", time.gmtime(second))
        return f"{self._text}.{int((t - second) * 1e6):06d}"


class _TxLogHost:
    """A `HostPort` writing a txlog line per device request and INTx change."""

    def __init__(self, inner: HostPort, line: Callable[[str], None], names: _Names) -> None:
        self.inner = inner
        self._line = line
        self._names = names

    def memory_write(self, req: Request) -> None:
        self.inner.memory_write(req)
        self._line(f"DEV {req} [{self._names.device(req)}] -> posted")

    def memory_write_block(self, addr: int, data: bytes) -> None:
        """Whole-DW memory writes at `addr`, `addr + 4`, ... (the backends' DMA fast
        path, never the MSI window), handed on as one block where the host takes blocks,
        and one line for the run: `addr=<first>..<last byte> dws=<n> first=<data>`.  A
        formatted line per DW made the log cost DMA nine tenths of its speed; the record
        file (--record) keeps every DW."""
        block = getattr(self.inner, "memory_write_block", None)
        if block is not None:
            block(addr, data)
        else:
            for off in range(0, len(data), 4):
                self.inner.memory_write(Request(Kind.MEM_WRITE, addr + off, 0xF,
                                                int.from_bytes(data[off:off + 4], "little")))
        self._line(f"DEV MEM_WRITE addr={addr:#x}..{addr + len(data) - 1:#x} "
                   f"dws={len(data) // 4} first={int.from_bytes(data[:4], 'little'):#010x} "
                   f"[host memory] -> posted")

    def memory_read(self, req: Request) -> Completion:
        cpl = self.inner.memory_read(req)
        self._line(f"DEV {req} [{self._names.device(req)}] -> {cpl}")
        return cpl

    def intx(self, asserted: bool) -> None:
        self.inner.intx(asserted)
        self._line(f"DEV INTX {'assert' if asserted else 'deassert'}")


@lru_cache(maxsize=8)
def _stream_pieces(dw: int, be: int, lane: int, tail: str | None, name: str,
                   ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The pieces of a stream's txlog lines (`TxLogEndpoint.io_write_stream`), by tag
    (left, right) and byte value (mid): `left[tag] + mid[byte] + right[tag]` is the
    line `transact_all` writes, `f"{request} [{name}] -> {completion}\\n"`, for a
    completion ending in `tail` (`right` stops before the status when `tail` is None).
    Cut from `str(Request)` and `str(Completion)` themselves, and checked, so the lines
    cannot differ from the slow path's."""
    def req(tag: int, byte: int) -> str:
        return str(Request(Kind.IO_WRITE, dw, be, byte << lane, tag))

    left = tuple(req(t, 0).split(" addr=", 1)[0] for t in range(256))
    mid = tuple(req(0, b)[len(left[0]):] for b in range(256))
    right = tuple(f" [{name}] -> CPL tag={t} {tail or ''}" for t in range(256))
    if tail is not None:
        cpl = Completion(255, Status[tail.split()[0]], int(tail.split("data=")[1], 16))
        if left[255] + mid[255] + right[255] != f"{req(255, 255)} [{name}] -> {cpl}\n":
            raise AssertionError("the txlog's stream pieces differ from str(Request)")
    return left, mid, right


@dataclass
class _Debugcon:
    """The debugcon listener (QEMU connects as the client) and the connections accepted."""

    listener: socket.socket | None
    conns: list[socket.socket] = field(default_factory=list)


class DeviceCore:
    """Serves one transport connection (and optionally debugcon) from `endpoint`.

    `debugcon`: a listening socket (QEMU's `-chardev socket` connects to it) or an already
    connected one.  The core owns the debugcon sockets it accepts; the transport owns the
    fds its peer sends; neither owns the transport's socket or the listener.
    """

    def __init__(self, endpoint: BridgeEndpoint, transport: Transport,
                 debugcon: socket.socket | None = None, *, idle_poll: float = IDLE_POLL_S,
                 message_timeout: float = MESSAGE_TIMEOUT_S,
                 console_flush: Callable[[], None] | None = None) -> None:
        self.endpoint = endpoint
        # Writes the console capture through (the session's sink buffers it): once per
        # debugcon batch and per transport message, not per byte.
        self._console_flush = console_flush if console_flush is not None else _nothing
        self.host = Host(endpoint)
        self.transport = transport
        if debugcon is not None and debugcon.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            self._dbg = _Debugcon(debugcon)
        else:
            self._dbg = _Debugcon(None, [debugcon] if debugcon is not None else [])
        self.idle_poll = idle_poll
        self.message_timeout = message_timeout
        self.counts: Counter[str] = Counter()  # messages per command name (transports count)
        self.debugcon_bytes = 0
        self.debugcon_batches = 0  # recv()s fed to the backend (bytes / batches: their size)
        self._stop = False
        self._txlog = endpoint if isinstance(endpoint, TxLogEndpoint) else None
        # The device's DMA and interrupt go to the guest, through this transport.
        self.guest = GuestHost(transport)
        endpoint.host = self.guest
        self._poller = select.poll()
        self._watched: dict[int, socket.socket] = {}  # fd -> debugcon socket (listener too)
        self._rebuild_poller()

    def stop(self) -> None:
        """Ask `serve()` to return at its next idle poll (e.g. from a signal handler)."""
        self._stop = True

    async def reset(self) -> None:
        """A device reset (QEMU's machine reset): console bytes written before it reach
        the sink first, then the backend resets."""
        await self.endpoint.drain_console()
        await self.endpoint.reset()

    async def serve(self) -> None:
        """Serve until the transport's peer closes the connection (normal end: returns).

        Raises ProtocolError for anything the protocol never allows, and lets backend
        failures propagate: either way the connection cannot meaningfully continue.
        Console bytes still inside the device reach the sink before it returns."""
        log.info("serving %s on fd %d%s", self.transport.name, self.transport.fileno(),
                 "" if self._dbg.listener is None and not self._dbg.conns else " and debugcon")
        try:
            while not self._stop:
                if not await self._step():
                    break
            await self.endpoint.drain_console()
        finally:
            self._close()
            self._console_flush()
            if self._txlog is not None:
                self._txlog.flush()
            log.info("served %s; %d debugcon bytes in %d batches; device to guest: %s; %s",
                     dict(self.counts) or "nothing", self.debugcon_bytes,
                     self.debugcon_batches, self.guest.counts, self.guest.latency_summary())

    def _rebuild_poller(self) -> None:
        """One poll object for the transport and the debugcon sockets, rebuilt only when
        the set changes (building one per message cost measurable time per access)."""
        self._poller = select.poll()
        self._poller.register(self.transport.fileno(), select.POLLIN)
        self._watched = {conn.fileno(): conn for conn in self._dbg.conns}
        if self._dbg.listener is not None:
            self._watched[self._dbg.listener.fileno()] = self._dbg.listener
        for fd in self._watched:
            self._poller.register(fd, select.POLLIN)

    async def _step(self) -> bool:
        txlog = self._txlog
        timeout = self.idle_poll
        if txlog is not None and txlog.pending:
            timeout = min(timeout, txlog.flush_after)  # bound how late a line is written
        ready = self._poller.poll(timeout * 1000)
        if not ready:
            if txlog is not None:
                txlog.flush()
            return True
        transport_ready = False
        # Debugcon first: its bytes were sent by the vCPU before whatever it does next.
        for fd, _ in ready:
            sock = self._watched.get(fd)
            if sock is None:
                transport_ready = True
            elif sock is self._dbg.listener:
                self._accept_debugcon()
            else:
                await self._debugcon_input(sock)
        if not transport_ready:
            return True
        await self._debugcon_before_message()
        self.guest.guest_message(time.perf_counter())
        if not await self.transport.on_readable(self):
            log.info("QEMU closed the %s connection", self.transport.name)
            await self._drain_debugcon()
            return False
        self._console_flush()  # an I/O write of port 0xe9 may have come this way too
        if txlog is not None:
            txlog.flush_if_due(time.monotonic())
        return True

    def _accept_debugcon(self) -> None:
        assert self._dbg.listener is not None
        try:
            conn, _ = self._dbg.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self._dbg.conns.append(conn)
        self._rebuild_poller()
        log.info("debugcon connected")

    async def _debugcon_input(self, conn: socket.socket, limit: int = DEBUGCON_CHUNK) -> int:
        """Feed what `conn` has queued (up to `limit` bytes, one recv) to the backend as
        one batch; the number of bytes, 0 when it had none (closed or empty).

        One batch: every byte is still its own I/O write of port 0xe9, in order, but
        `Host.io_write_each` hands them over together (the RTL runs them back to back in
        one simulator call, the txlog writes them at once) and the capture is flushed
        once.  A byte at a time cost a round trip, a write and a flush each."""
        try:
            data = conn.recv(limit, _DONTWAIT)
        except BlockingIOError:
            return 0
        except ConnectionResetError:
            data = b""
        if not data:
            log.info("debugcon disconnected")
            self._dbg.conns.remove(conn)
            self._rebuild_poller()
            conn.close()
            return 0
        await self.host.io_write_each(DEBUGCON_PORT, data)
        self.debugcon_bytes += len(data)
        self.debugcon_batches += 1
        self._console_flush()
        return len(data)

    async def _debugcon_before_message(self) -> None:
        """Ordering: the debugcon bytes the vCPU wrote before the access now waiting on
        the transport reach the device first.  They are all queued on the debugcon socket
        by now (QEMU's chardev write returns before the vCPU goes on), but one recv takes
        at most DEBUGCON_CHUNK, and a socket (or the listener) that poll() found empty a
        moment before may have filled since: take what is queued now, and no more (a
        second vCPU writing on must not hold the access back)."""
        listener = self._dbg.listener
        if listener is not None and not self._dbg.conns and _readable(listener):
            self._accept_debugcon()  # QEMU connected and wrote in that same moment
        for conn in list(self._dbg.conns):
            left = _queued(conn)
            while left > 0 and conn in self._dbg.conns:
                got = await self._debugcon_input(conn, min(left, DEBUGCON_CHUNK))
                if not got:
                    break
                left -= got

    async def _drain_debugcon(self) -> None:
        """At QEMU's exit: take in bytes written just before it, until the peer closes or
        nothing more comes for DRAIN_QUIET_S."""
        if self._dbg.listener is not None and _readable(self._dbg.listener):
            self._accept_debugcon()
        for conn in list(self._dbg.conns):
            deadline = time.monotonic() + DRAIN_QUIET_S
            while conn in self._dbg.conns and time.monotonic() < deadline:
                poller = select.poll()
                poller.register(conn, select.POLLIN)
                if poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                    if await self._debugcon_input(conn) > 0:
                        deadline = time.monotonic() + DRAIN_QUIET_S

    def _close(self) -> None:
        self.transport.close()
        for conn in self._dbg.conns:
            conn.close()
        self._dbg.conns.clear()


def _nothing() -> None:
    pass


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _queued(conn: socket.socket) -> int:
    """Bytes waiting in `conn`'s receive queue (FIONREAD: one ioctl, no exception when
    there are none, unlike a non-blocking recv)."""
    count = array.array("i", [0])
    fcntl.ioctl(conn.fileno(), termios.FIONREAD, count, True)
    return count[0]
