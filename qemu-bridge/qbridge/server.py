"""The device server: serves QEMU's x-pci-proxy-dev and isa-debugcon from a backend.

    python -m qbridge.server --backend {model|rtl} [--sim {icarus|verilator}] [--waves 0|1]
        (--proxy-fd N | --proxy-listen PATH) [--debugcon-listen PATH] --capture FILE
        [--txlog FILE] [--log FILE] [--ready-file FILE]

QEMU's messages (qbridge.proxy_protocol) become transactions through the one `Host`
read/write API of models.transaction, on any `Endpoint`: the golden model here, the RTL
under cocotb in qbridge.rtl_backend (which runs this same `DeviceServer.serve()`).
Protocol, message sequences and decisions: docs/bridge-protocol.md.

`serve()` is lock-step and deliberately free of asyncio primitives: it blocks in
`select.poll` (bounded timeout) while QEMU is idle and only `await`s the Host.  Under
asyncio that is harmless (nothing else runs); inside a cocotb coroutine it freezes
simulated time while idle, so a VM run against the RTL is deterministic
(/work/shared/toolchain-facts.md, "Serving a socket from inside a cocotb simulation").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import select
import socket
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from models.regmap import DEBUGCON_PORT
from models.transaction import Completion, Endpoint, Host, Request, Space, transact_all
from qbridge.proxy_protocol import (
    BarAccess,
    Cmd,
    ConfigAccess,
    Message,
    ProtocolError,
    SyncSysmem,
    SysmemRegion,
    close_fds,
    recv_message,
    send_reply,
)

__all__ = [
    "BridgeIO",
    "DeviceServer",
    "TxLogEndpoint",
    "main",
    "open_bridge_io",
    "parse_args",
]

log = logging.getLogger("cosim.bridge")

IDLE_POLL_S = 0.5  # bounded idle wait: peers closing and stop requests are noticed
MESSAGE_TIMEOUT_S = 10.0  # a started message (QEMU sends it in one sendmsg) must complete
DRAIN_QUIET_S = 0.2  # at shutdown, debugcon bytes still in flight arrive within this
DEBUGCON_CHUNK = 4096


# Messages whose accesses the txlog records (server.log does not repeat them).
_DONTWAIT = int(socket.MSG_DONTWAIT)  # an int: IntFlag operations are slow (proxy_protocol)
_CMD_NAMES = {cmd: cmd.name for cmd in Cmd}  # `Enum.name` is slow, and this is per message
_TXLOGGED = frozenset((Cmd.PCI_CFGREAD, Cmd.PCI_CFGWRITE, Cmd.BAR_READ, Cmd.BAR_WRITE))


class TxLogEndpoint:
    """An Endpoint wrapper writing one line per transaction (and per reset) to `out`.

    Generic over any Endpoint; `now()`, if given, prefixes each line with a time stamp
    (the RTL backend passes the simulation time).  Lines are written through at most
    `flush_after` seconds late (`flush_if_due`, which the server calls after every
    message and when idle), and at `close`: a flush per line was a third of a guest
    read's cost (bench/README.md).  A process killed outright loses at most that window.
    """

    def __init__(self, inner: Endpoint, out: TextIO,
                 now: Callable[[], str] | None = None, flush_after: float = 0.05) -> None:
        self.inner = inner
        self._out = out
        self._now = now
        self.flush_after = flush_after
        self._dirty_since: float | None = None

    def _line(self, text: str) -> None:
        if self._now is not None:
            text = f"{self._now()} {text}"
        self._out.write(text + "\n")
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

    async def transact(self, req: Request) -> Completion | None:
        cpl = await self.inner.transact(req)
        self._line(f"{req} -> {cpl if cpl is not None else 'posted'}")
        return cpl

    async def transact_all(self, reqs: Sequence[Request]) -> list[Completion | None]:
        """Hands `reqs` on together (models.transaction.transact_all), a line each."""
        cpls = await transact_all(self.inner, reqs)
        for req, cpl in zip(reqs, cpls, strict=True):
            self._line(f"{req} -> {cpl if cpl is not None else 'posted'}")
        return cpls

    async def reset(self) -> None:
        await self.inner.reset()
        self._line("RESET")
        self.flush()


@dataclass
class _Debugcon:
    """The debugcon listener (QEMU connects as the client) and the connections accepted."""

    listener: socket.socket | None
    conns: list[socket.socket] = field(default_factory=list)


class DeviceServer:
    """Serves one x-pci-proxy-dev connection (and optionally debugcon) from `host`.

    `proxy`: the connected stream socket to QEMU.  `debugcon`: a listening socket (QEMU's
    `-chardev socket` connects to it) or an already connected one; each byte received is
    an I/O write of port 0xe9 on the backend.  The server owns the sockets it accepts and
    the fds QEMU sends, not `proxy` or the listener.
    """

    def __init__(self, host: Host, proxy: socket.socket, debugcon: socket.socket | None = None,
                 *, idle_poll: float = IDLE_POLL_S,
                 message_timeout: float = MESSAGE_TIMEOUT_S) -> None:
        self.host = host
        self.proxy = proxy
        if debugcon is not None and debugcon.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            self._dbg = _Debugcon(debugcon)
        else:
            self._dbg = _Debugcon(None, [debugcon] if debugcon is not None else [])
        self.idle_poll = idle_poll
        self.message_timeout = message_timeout
        # Guest RAM regions of the last SYNC_SYSMEM, kept for later DMA (their fds are
        # closed at once: mapping them is future work, and every message brings new ones).
        self.sysmem: tuple[SysmemRegion, ...] = ()
        # SET_IRQFD's (interrupt, resample) eventfds: only usable through KVM's irqfd.
        self.irqfds: tuple[int, ...] = ()
        self.counts: Counter[str] = Counter()  # messages per command name
        self.debugcon_bytes = 0
        self._stop = False
        self._txlog = host.endpoint if isinstance(host.endpoint, TxLogEndpoint) else None
        self._poller = select.poll()
        self._watched: dict[int, socket.socket] = {}  # fd -> debugcon socket (listener too)
        self._rebuild_poller()

    def stop(self) -> None:
        """Ask `serve()` to return at its next idle poll (e.g. from a signal handler)."""
        self._stop = True

    async def serve(self) -> None:
        """Serve until QEMU closes the proxy connection (normal end: returns).

        Raises ProtocolError for anything QEMU never sends, and lets backend failures
        propagate: either way the connection cannot meaningfully continue."""
        log.info("serving x-pci-proxy-dev on fd %d%s", self.proxy.fileno(),
                 "" if self._dbg.listener is None and not self._dbg.conns else " and debugcon")
        try:
            while not self._stop:
                if not await self._step():
                    break
        finally:
            self._close()
            log.info("served %s; %d debugcon bytes", dict(self.counts) or "nothing",
                     self.debugcon_bytes)

    def _rebuild_poller(self) -> None:
        """One poll object for the proxy and the debugcon sockets, rebuilt only when the set
        changes (building one per message cost measurable time per guest access)."""
        self._poller = select.poll()
        self._poller.register(self.proxy.fileno(), select.POLLIN)
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
        proxy_ready = False
        # Debugcon first: its bytes were sent by the vCPU before whatever it does next.
        for fd, _ in ready:
            sock = self._watched.get(fd)
            if sock is None:
                proxy_ready = True
            elif sock is self._dbg.listener:
                self._accept_debugcon()
            else:
                await self._debugcon_input(sock)
        if not proxy_ready:
            return True
        msg = recv_message(self.proxy, self.message_timeout)
        if msg is None:
            log.info("QEMU closed the proxy connection")
            await self._drain_debugcon()
            return False
        await self._dispatch(msg)
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

    async def _debugcon_input(self, conn: socket.socket) -> bool:
        """Feed what `conn` has to the backend; False when it has nothing (closed/empty)."""
        try:
            data = conn.recv(DEBUGCON_CHUNK, _DONTWAIT)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            data = b""
        if not data:
            log.info("debugcon disconnected")
            self._dbg.conns.remove(conn)
            self._rebuild_poller()
            conn.close()
            return False
        for byte in data:
            await self.host.io_write(DEBUGCON_PORT, byte, 1)
        self.debugcon_bytes += len(data)
        return True

    async def _drain_debugcon(self) -> None:
        """At QEMU's exit: take in bytes written just before it, until the peer closes or
        nothing more comes for DRAIN_QUIET_S."""
        if self._dbg.listener is not None:
            poller = select.poll()
            poller.register(self._dbg.listener, select.POLLIN)
            if poller.poll(0):
                self._accept_debugcon()
        for conn in list(self._dbg.conns):
            deadline = time.monotonic() + DRAIN_QUIET_S
            while conn in self._dbg.conns and time.monotonic() < deadline:
                poller = select.poll()
                poller.register(conn, select.POLLIN)
                if poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                    if await self._debugcon_input(conn):
                        deadline = time.monotonic() + DRAIN_QUIET_S

    async def _dispatch(self, msg: Message) -> None:
        cmd = msg.cmd
        self.counts[_CMD_NAMES[cmd]] += 1
        if cmd is Cmd.BAR_READ and self._txlog is not None:
            # The most frequent message (every guest MMIO read), straight through: no
            # pattern matching, no debug record (the txlog has the access).
            addr, _, size, memory = msg.payload  # type: ignore[misc]
            value = await self.host.read(Space.MEM if memory else Space.IO, addr, size)
            send_reply(self.proxy, value, self.message_timeout)
            return
        reply: int | None = None
        match msg.payload:
            case ConfigAccess(addr, val, length) if msg.cmd is Cmd.PCI_CFGREAD:
                reply = await self.host.cfg_read(addr, length)
            case ConfigAccess(addr, val, length):
                await self.host.cfg_write(addr, val, length)
                reply = 0
            case BarAccess(addr, val, size, memory):
                # The absolute bus address goes to the device, which decodes it against the
                # BAR0 the guest programmed; Host splits 8-byte and unaligned accesses into
                # DW requests and turns an unsupported request into all-ones.
                space = Space.MEM if memory else Space.IO
                if msg.cmd is Cmd.BAR_READ:
                    reply = await self.host.read(space, addr, size)
                else:
                    await self.host.write(space, addr, val, size)
                    reply = 0
            case SyncSysmem(regions):
                self.sysmem = regions
                close_fds(msg.fds)
            case _ if msg.cmd is Cmd.SET_IRQFD:
                close_fds(self.irqfds)
                self.irqfds = msg.fds
            case _ if msg.cmd is Cmd.DEVICE_RESET:
                await self.host.endpoint.reset()
                reply = 0
        if msg.cmd not in _TXLOGGED or self._txlog is None:
            # With a txlog the accesses are there already; a debug record per access cost
            # ~20% of the server's time per guest read (py-spy, bench/README.md).
            log.debug("%s -> %s", msg, "no reply" if reply is None else f"{reply:#x}")
        if msg.wants_reply:
            assert reply is not None, f"no reply computed for {msg}"
            send_reply(self.proxy, reply, self.message_timeout)

    def _close(self) -> None:
        close_fds(self.irqfds)
        self.irqfds = ()
        for conn in self._dbg.conns:
            conn.close()
        self._dbg.conns.clear()


# ---------------------------------------------------------------------------------------
# Command line: shared by the model backend (here) and the RTL backend (rtl_backend.py,
# which receives the parsed arguments inside the simulator through QBRIDGE_ARGS).

ARGS_ENV = "QBRIDGE_ARGS"
ACCEPT_TIMEOUT_S = 120.0  # the launcher connects right after the ready file appears


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qbridge.server", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("model", "rtl"), required=True)
    p.add_argument("--sim", choices=("icarus", "verilator"), default="icarus",
                   help="simulator of the RTL backend (default icarus)")
    p.add_argument("--waves", type=int, choices=(0, 1), default=0,
                   help="RTL backend: record FST waves in the build folder")
    proxy = p.add_mutually_exclusive_group(required=True)
    proxy.add_argument("--proxy-fd", type=int, metavar="N",
                       help="inherited, connected end of a socketpair (model backend)")
    proxy.add_argument("--proxy-listen", type=Path, metavar="PATH",
                       help="listen on this Unix socket and accept one proxy connection")
    p.add_argument("--debugcon-listen", type=Path, metavar="PATH",
                   help="listen here for QEMU's -chardev socket of isa-debugcon")
    p.add_argument("--capture", type=Path, required=True, metavar="FILE",
                   help="the device's console output (created or truncated at start)")
    p.add_argument("--txlog", type=Path, metavar="FILE", help="one line per transaction")
    p.add_argument("--log", type=Path, metavar="FILE", help="server log (debug level)")
    p.add_argument("--ready-file", type=Path, metavar="FILE",
                   help="written once all listening sockets exist")
    p.add_argument("--accept-timeout", type=float, default=ACCEPT_TIMEOUT_S, metavar="S",
                   help=f"--proxy-listen: wait this long for the connection "
                        f"(default {ACCEPT_TIMEOUT_S:g})")
    p.add_argument("--build-dir", type=Path, default=Path("build"), metavar="DIR",
                   help="RTL backend: build/rtl and build/bridge-sim/<sim> live here")
    args = p.parse_args(argv)
    if args.backend == "rtl" and args.proxy_fd is not None:
        p.error("--backend rtl runs inside a simulator process, which cannot inherit an fd: "
                "use --proxy-listen")
    # Absolute from here on: the RTL backend's simulator runs in its own folder, where a
    # relative path would name another file (issue 6: `--out out/...` lost the run).
    for name, value in vars(args).items():
        if isinstance(value, Path):
            setattr(args, name, Path(os.path.abspath(value)))
    return args


def setup_logging(log_file: Path | None, append: bool = False) -> None:
    """Warnings and errors on stderr; everything (debug) in --log FILE.

    The file is truncated unless `append`, and always written in append mode: the RTL
    backend's simulator process logs into the same file as its parent."""
    root = logging.getLogger("cosim")
    root.setLevel(logging.DEBUG)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING)
    stderr.setFormatter(logging.Formatter("qbridge.server: %(levelname)s: %(message)s"))
    root.addHandler(stderr)
    if log_file is not None:
        if not append:
            log_file.write_text("")
        handler = logging.FileHandler(log_file, mode="a")
        handler.setFormatter(logging.Formatter(
            "%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.propagate = False


def _listen(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.stat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        path.unlink()  # a stale socket of an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    sock.setblocking(False)
    return sock


def _write_ready(path: Path) -> None:
    """Atomically: the launcher never sees a half-written ready file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


@dataclass
class BridgeIO:
    """The server's sockets and output files, set up from the command line."""

    proxy_listener: socket.socket | None
    proxy: socket.socket | None
    debugcon: socket.socket | None
    capture: BinaryIO
    txlog: TextIO | None

    def console_sink(self, data: bytes) -> None:
        self.capture.write(data)
        self.capture.flush()

    def accept_proxy(self, timeout: float) -> socket.socket:
        """The proxy connection: the inherited one, or the one accepted on --proxy-listen."""
        if self.proxy is not None:
            return self.proxy
        assert self.proxy_listener is not None
        poller = select.poll()
        poller.register(self.proxy_listener, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise TimeoutError(f"nobody connected to the proxy socket within {timeout:g} s")
        conn, _ = self.proxy_listener.accept()
        conn.setblocking(True)
        self.proxy_listener.close()  # exactly one connection
        self.proxy_listener = None
        self.proxy = conn
        log.info("proxy connection accepted")
        return conn

    def close(self) -> None:
        for sock in (self.proxy_listener, self.proxy, self.debugcon):
            if sock is not None:
                sock.close()
        self.capture.close()
        if self.txlog is not None:
            self.txlog.close()


@contextlib.contextmanager
def open_bridge_io(args: argparse.Namespace) -> Iterator[BridgeIO]:
    """Open the capture and txlog files, the proxy and debugcon sockets; write the ready
    file once every listening socket exists.  Everything is closed on exit."""
    capture = open(args.capture, "wb", buffering=0)  # noqa: SIM115 (closed by BridgeIO)
    io = BridgeIO(None, None, None, capture, None)
    try:
        if args.txlog is not None:
            io.txlog = open(args.txlog, "w")  # noqa: SIM115
        if args.proxy_fd is not None:
            try:
                io.proxy = socket.socket(fileno=args.proxy_fd)
            except OSError as exc:
                raise OSError(f"--proxy-fd {args.proxy_fd}: not a usable socket ({exc})") from exc
            if io.proxy.family != socket.AF_UNIX or io.proxy.type != socket.SOCK_STREAM:
                raise OSError(f"--proxy-fd {args.proxy_fd}: not a Unix stream socket")
            io.proxy.setblocking(True)
        else:
            io.proxy_listener = _listen(args.proxy_listen)
        if args.debugcon_listen is not None:
            io.debugcon = _listen(args.debugcon_listen)
        if args.ready_file is not None:
            _write_ready(args.ready_file)
        yield io
    finally:
        io.close()


def serve_with(endpoint: Endpoint, io: BridgeIO, args: argparse.Namespace,
               now: Callable[[], str] | None = None) -> DeviceServer:
    """Build the DeviceServer for `endpoint` (wrapped for --txlog) on the accepted proxy."""
    if io.txlog is not None:
        endpoint = TxLogEndpoint(endpoint, io.txlog, now)
    proxy = io.accept_proxy(args.accept_timeout)
    return DeviceServer(Host(endpoint), proxy, io.debugcon)


async def _serve_model(args: argparse.Namespace) -> None:
    from models.device import Device

    with open_bridge_io(args) as io:
        server = serve_with(Device(console_sink=io.console_sink), io, args)
        await server.serve()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log)
    try:
        if args.backend == "rtl":
            from qbridge.rtl_backend import run_simulation

            os.environ[ARGS_ENV] = json.dumps({k: str(v) if isinstance(v, Path) else v
                                               for k, v in vars(args).items()})
            return run_simulation(args)
        asyncio.run(_serve_model(args))
    except ProtocolError as exc:
        log.error("protocol error: %s", exc)
        return 1
    except (OSError, TimeoutError) as exc:
        log.error("%s", exc)
        return 1
    except Exception as exc:  # a backend failure: say what, keep the trace in --log
        log.debug("backend failure", exc_info=True)
        log.error("backend failure: %s: %s", type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
