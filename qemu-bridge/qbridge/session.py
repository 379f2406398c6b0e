"""One device-server run's sockets, files and logging, set up from its `ServerConfig`.

Shared by the model backend (`qbridge.server`) and the RTL backend, which runs the same
session inside its simulator (`qbridge.rtl.backend`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from qbridge.config import ServerConfig
from qbridge.core import BridgeEndpoint, DeviceCore, Transport, TxLogEndpoint
from qbridge.proxy.transport import ProxyTransport
from qbridge.record import RecordEndpoint, RecordWriter
from qbridge.vfio_user.transport import VfioUserTransport

__all__ = ["BridgeIO", "open_bridge_io", "serve_with", "setup_logging"]

log = logging.getLogger("cosim.bridge")


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

    listener: socket.socket | None  # --transport-listen, until the one connection came
    conn: socket.socket | None  # the transport connection (inherited or accepted)
    debugcon: socket.socket | None
    capture: BinaryIO
    txlog: TextIO | None
    record: RecordWriter | None = None  # --record: what the device saw (qbridge.record)
    _capture_dirty: bool = field(default=False, repr=False)

    def console_sink(self, data: bytes) -> None:
        """The backend's console bytes, buffered: `flush_capture` writes them through (the
        core calls it after every debugcon batch and transport message; a flush per
        byte was a write syscall per byte)."""
        self.capture.write(data)
        if self.record is not None:
            self.record.console(data)
        self._capture_dirty = True

    def flush_capture(self) -> None:
        if self._capture_dirty:
            self.capture.flush()
            self._capture_dirty = False

    def accept_transport(self, timeout: float) -> socket.socket:
        """The transport connection: the inherited one, or the one accepted on
        --transport-listen (the launcher's for x-pci-proxy-dev, QEMU's own for vfio-user)."""
        if self.conn is not None:
            return self.conn
        assert self.listener is not None
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise TimeoutError(f"nobody connected to the transport socket within {timeout:g} s")
        conn, _ = self.listener.accept()
        conn.setblocking(True)
        self.listener.close()  # exactly one connection
        self.listener = None
        self.conn = conn
        log.info("transport connection accepted")
        return conn

    def close(self) -> None:
        for sock in (self.listener, self.conn, self.debugcon):
            if sock is not None:
                sock.close()
        self.capture.close()
        if self.txlog is not None:
            self.txlog.close()
        if self.record is not None:
            self.record.close()


@contextlib.contextmanager
def open_bridge_io(config: ServerConfig) -> Iterator[BridgeIO]:
    """Open the capture and txlog files, the transport and debugcon sockets; write the ready
    file once every listening socket exists.  Everything is closed on exit."""
    capture = open(config.capture, "wb")  # noqa: SIM115 (closed by BridgeIO)
    io = BridgeIO(None, None, None, capture, None)
    try:
        if config.txlog is not None:
            io.txlog = open(config.txlog, "w")  # noqa: SIM115
        if config.record is not None:
            io.record = RecordWriter.open(config.record, {
                "transport": config.transport, "backend": config.backend,
                "sim": config.sim if config.backend == "rtl" else None})
        if config.transport_fd is not None:
            fd = config.transport_fd
            try:
                io.conn = socket.socket(fileno=fd)
            except OSError as exc:
                raise OSError(f"--transport-fd {fd}: not a usable socket ({exc})") from exc
            if io.conn.family != socket.AF_UNIX or io.conn.type != socket.SOCK_STREAM:
                raise OSError(f"--transport-fd {fd}: not a Unix stream socket")
            io.conn.setblocking(True)
        else:
            assert config.transport_listen is not None
            io.listener = _listen(config.transport_listen)
        if config.debugcon_listen is not None:
            io.debugcon = _listen(config.debugcon_listen)
        if config.ready_file is not None:
            _write_ready(config.ready_file)
        yield io
    finally:
        io.close()


def serve_with(endpoint: BridgeEndpoint, io: BridgeIO, config: ServerConfig,
               now: Callable[[], str] | None = None,
               batch_stamps: Callable[[], Sequence[str]] | None = None) -> DeviceCore:
    """The core for `endpoint` (wrapped for --txlog, `now`/`batch_stamps` as
    `TxLogEndpoint` takes them) on the accepted connection, speaking the configured
    transport's protocol; the capture is flushed by the core.  With --record the backend
    is recorded below the txlog (the host the core gives it too: `RecordEndpoint.host`)."""
    if io.record is not None:
        io.record.set_clock(now, batch_stamps)
        endpoint = RecordEndpoint(endpoint, io.record)
    if io.txlog is not None:
        endpoint = TxLogEndpoint(endpoint, io.txlog, now, batch_stamps=batch_stamps)
    conn = io.accept_transport(config.accept_timeout)
    transport: Transport
    if config.transport == "vfio-user":
        transport = VfioUserTransport(conn)
    else:
        transport = ProxyTransport(conn)
    return DeviceCore(endpoint, transport, io.debugcon, console_flush=io.flush_capture)
