"""Benchmark: debugcon throughput of the device server, host socket -> capture, no VM.

    python -m bench.debugcon [--bytes N] [--runs N] [--backend LABEL ...]

One `python -m qbridge.server` per backend (model, RTL on Icarus, RTL on Verilator), as
the launcher starts it (txlog, log, capture).  A client plays QEMU: it connects to the
transport socket (x-pci-proxy-dev) and to the debugcon socket, does one config read (the
server, and for the RTL the simulation, is up), then per sample sends `--bytes` bytes to
the debugcon socket in one `sendall` -- what `isa-debugcon` delivers when the guest
writes faster than the server reads -- and times until the capture file holds them all
(polled every millisecond).  After the samples a config read must find every byte served
(the core's ordering rule), and at the end the capture must be byte-exact.

Why at the socket: a guest's `write(2)` to /dev/debugcon adds TCG and QEMU's per-byte
chardev send, which bench/README.md reports separately; this figure is what the server
and its backend cost per byte.  `measure()` is what bench.run calls.

`--per-byte` sends as QEMU's `isa-debugcon` does instead: a `send()` per byte on a
non-blocking socket, 100 us of sleep when it is full (EAGAIN; QEMU's chardev retries
from its main loop), so the server gets the small batches it gets in a guest (a Unix
socket holds ~270 one-byte sends) and its cost per batch and per byte shows as it does
there, without a VM.  The sender is Python too (~250-350 KB/s on its own, loaded), so
that figure is bound by it once the server is fast: the log line per sample also gives
the server's CPU time per byte (its session's processes: the server and the simulator),
which is what the guest figure is bound by.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qbridge.childenv import child_env

from models.contract.layout import REPO

__all__ = ["BACKENDS", "BURST", "FIGURE", "main", "measure", "run_backend", "start_server"]

log = logging.getLogger("cosim.bench.debugcon")

# label -> (server backend, simulator)
BACKENDS = {"model": ("model", "icarus"), "rtl-icarus": ("rtl", "icarus"),
            "rtl-verilator": ("rtl", "verilator")}
FIGURE = "debugcon 64 KiB host->capture"
BURST = 64 * 1024  # bytes per sample (the figure's name says so)
READY_TIMEOUT_S = 600.0  # includes a fresh simulator build
SAMPLE_TIMEOUT_S = 300.0  # one burst (Icarus: ~6-10 s per 64 KiB)
_CFGREAD = 3
_HEADER = struct.Struct("=i4xQ")
_CONFIG = struct.Struct("=IIi")


def _cfg_read(sock: socket.socket, addr: int, size: int, timeout: float) -> int:
    sock.sendall(_HEADER.pack(_CFGREAD, _CONFIG.size) + _CONFIG.pack(addr, 0, size))
    buf = b""
    deadline = time.monotonic() + timeout
    while len(buf) < 24:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            raise TimeoutError(f"no reply to a config read within {timeout:g} s")
        chunk = sock.recv(24 - len(buf))
        if not chunk:
            raise ConnectionError("the server closed the transport connection")
        buf += chunk
    return int.from_bytes(buf[16:], "little")


def _pattern(nbytes: int, run: int) -> bytes:
    """Every byte value, shifted per run: a lost, doubled or reordered byte shows."""
    return bytes((i * 7 + run) & 0xFF for i in range(nbytes))


PER_BYTE_RETRY_S = 100e-6  # QEMU's chardev: a full socket is retried from its main loop


def _send_per_byte(sock: socket.socket, data: bytes) -> None:
    """`data` a byte per `send()`, as QEMU's isa-debugcon sends a guest's writes."""
    sock.setblocking(False)
    try:
        view = memoryview(data)
        i = 0
        while i < len(view):
            try:
                i += sock.send(view[i:i + 1])
            except BlockingIOError:
                time.sleep(PER_BYTE_RETRY_S)
    finally:
        sock.setblocking(True)


def _session_cpu_s(sid: int) -> float:
    """User + system CPU seconds of the live processes in session `sid` (the server was
    started as a session leader: it and its simulator)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[3]) == sid:  # field 6, session
            total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def start_server(label: str, tmp: Path, txlog: bool = True) -> subprocess.Popen[str]:
    """`python -m qbridge.server` for backend `label` as the launcher starts it (txlog
    unless `txlog` is False), in `tmp`, x-pci-proxy-dev on tmp/proxy.sock, debugcon on
    tmp/dbg.sock, capture tmp/cap; returned once ready, a session leader (kill its group)."""
    backend, sim = BACKENDS[label]
    cmd = [sys.executable, "-m", "qbridge.server", "--backend", backend, "--sim", sim,
           "--transport-listen", str(tmp / "proxy.sock"),
           "--debugcon-listen", str(tmp / "dbg.sock"), "--capture", str(tmp / "cap"),
           "--log", str(tmp / "server.log"), "--ready-file", str(tmp / "ready")]
    if txlog:
        cmd += ["--txlog", str(tmp / "txlog")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (tmp / "ready").exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{label}: server exited {proc.returncode}: "
                               f"{proc.communicate()[1].strip()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"{label}: server not ready in {READY_TIMEOUT_S:g} s")
        time.sleep(0.05)
    return proc


def run_backend(label: str, nbytes: int, runs: int, tmp: Path,
                per_byte: bool = False) -> list[float]:
    """`runs` samples in KB/s (1 KB = 1000 bytes) of `nbytes` each through one server."""
    cap = tmp / "cap"
    proc = start_server(label, tmp)
    try:
        proxy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        proxy.connect(str(tmp / "proxy.sock"))
        dbg = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dbg.connect(str(tmp / "dbg.sock"))
        _cfg_read(proxy, 0, 2, 60.0)  # up (the RTL's first access waits for the simulator)
        sent = b""
        samples = []
        for run in range(runs):
            data = _pattern(nbytes, run)
            want = len(sent) + nbytes
            cpu0 = _session_cpu_s(proc.pid)
            t0 = time.perf_counter()
            if per_byte:
                _send_per_byte(dbg, data)
            else:
                dbg.sendall(data)
            sent += data
            limit = time.monotonic() + SAMPLE_TIMEOUT_S
            while (cap.stat().st_size if cap.exists() else 0) < want:
                if proc.poll() is not None or time.monotonic() > limit:
                    raise RuntimeError(f"{label}: {cap.stat().st_size} of {want} bytes "
                                       f"captured (server exit status {proc.poll()})")
                time.sleep(0.001)
            samples.append(nbytes / (time.perf_counter() - t0) / 1e3)
            cpu = _session_cpu_s(proc.pid) - cpu0
            log.info("%s: %d bytes at %.1f KB/s, server CPU %.2f us per byte", label, nbytes,
                     samples[-1], cpu / nbytes * 1e6)
        _cfg_read(proxy, 0, 2, 60.0)
        dbg.close()
        proxy.close()
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{label}: server exited {proc.returncode}: {err.strip()}")
        got = cap.read_bytes()
        if got != sent:
            raise RuntimeError(f"{label}: capture differs ({len(got)} of {len(sent)} bytes)")
        return samples
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure(nbytes: int, runs: int, labels: tuple[str, ...] = tuple(BACKENDS),
            per_byte: bool = False) -> dict[str, list[float]]:
    """KB/s samples per backend label (one server per backend, `runs` bursts each)."""
    out = {}
    for label in labels:
        with tempfile.TemporaryDirectory(prefix="qbridge-debugcon-") as tmp:
            out[label] = run_backend(label, nbytes, runs, Path(tmp), per_byte)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.debugcon",
                                description=__doc__.splitlines()[0])
    p.add_argument("--bytes", type=int, default=BURST)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--backend", action="append", choices=tuple(BACKENDS), default=None)
    p.add_argument("--per-byte", action="store_true",
                   help="a send() per byte, 100 us sleep on EAGAIN, as QEMU's debugcon")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for label, samples in measure(args.bytes, args.runs, tuple(args.backend or BACKENDS),
                                  args.per_byte).items():
        print(f"{label:>14}: " + ", ".join(f"{s:.1f}" for s in samples) + " KB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
