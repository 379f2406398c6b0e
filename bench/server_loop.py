"""Benchmark: the device server's own cost per guest read, without QEMU or a guest.

    python -m bench.server_loop [--reads N] [--runs N] [--cpu CPU]

A fake QEMU (a plain-socket client in a second process, on the same CPU as the server,
like the pinned guest figures) sends `--reads` lock-step BAR_READ messages of the RNG
register over a socketpair, exactly as QEMU's x-pci-proxy-dev does, and waits for each
RET.  Two servers answer, one after the other:
- `minimal`: the smallest Python loop that can serve the wire format (blocking `recv` of
  header and payload, a constant reply) -- the floor of any Python device server, the one
  docs/measured-facts.md measured at 19.6 us per pinned guest read;
- `model`: `qbridge.core.DeviceCore` with the model backend and a txlog, what
  `make vm BACKEND=model` runs.
Figures per read: the server's CPU time (user + system, `getrusage` around the serve
loop: independent of what else the machine runs, unlike wall time) and the client's wall
time per round trip.  Guest figures add QEMU's own work (the vCPU leaving TCG, its
send and receive) to these.  `measure()` is what bench.run calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qbridge.childenv import child_env
from qbridge.proxy.protocol import BAR_PAYLOAD, CONFIG_PAYLOAD, HEADER, REPLY_SIZE, Cmd

from models.contract.regmap import BAR0_TEST_BASE

__all__ = ["VARIANTS", "main", "measure"]

VARIANTS = ("minimal", "model")
BAR0 = BAR0_TEST_BASE
_TIMEOUT_S = 120.0  # a whole run; a stuck peer must not hang the benchmark


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = sock.recv(n, socket.MSG_WAITALL)
    if len(data) != n:
        raise ConnectionError(f"peer closed after {len(data)} of {n} bytes")
    return data


# ---------------------------------------------------------------------------------------
# The fake QEMU (client process).


def _client(fd: int, reads: int) -> None:
    sock = socket.socket(fileno=fd)
    sock.settimeout(_TIMEOUT_S)

    def round_trip(cmd: int, payload: bytes) -> None:
        sock.sendall(HEADER.pack(cmd, len(payload)) + payload)
        _recv_exact(sock, HEADER.size + REPLY_SIZE)

    # Enable the function as the guest's PCI core does: BAR0, then COMMAND.MEM.
    round_trip(Cmd.PCI_CFGWRITE, CONFIG_PAYLOAD.pack(0x10, BAR0, 4))
    round_trip(Cmd.PCI_CFGWRITE, CONFIG_PAYLOAD.pack(0x04, 0x2, 2))
    message = HEADER.pack(Cmd.BAR_READ, BAR_PAYLOAD.size) + BAR_PAYLOAD.pack(BAR0, 0, 4, True)
    t0 = time.perf_counter()
    for _ in range(reads):
        sock.sendall(message)
        _recv_exact(sock, HEADER.size + REPLY_SIZE)
    wall = time.perf_counter() - t0
    print(json.dumps({"client_wall_us": wall / reads * 1e6}), flush=True)
    sock.close()


# ---------------------------------------------------------------------------------------
# The servers (server process).


def _serve_minimal(sock: socket.socket) -> None:
    reply = HEADER.pack(Cmd.RET, REPLY_SIZE) + (0x1234_5678).to_bytes(REPLY_SIZE, "little")
    while True:
        header = sock.recv(HEADER.size, socket.MSG_WAITALL)
        if len(header) < HEADER.size:
            return
        _, size = HEADER.unpack(header)
        _recv_exact(sock, size)
        sock.sendall(reply)


def _serve_model(sock: socket.socket, txlog: Path) -> None:
    from qbridge.core import DeviceCore, TxLogEndpoint
    from qbridge.proxy.transport import ProxyTransport

    from models.device import Device

    with open(txlog, "w") as out:
        server = DeviceCore(TxLogEndpoint(Device(), out), ProxyTransport(sock))
        asyncio.run(server.serve())


def _server(fd: int, variant: str) -> None:
    sock = socket.socket(fileno=fd)
    with tempfile.TemporaryDirectory() as tmp:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        if variant == "minimal":
            _serve_minimal(sock)
        else:
            _serve_model(sock, Path(tmp) / "txlog")
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime}),
          flush=True)


# ---------------------------------------------------------------------------------------
# The launcher.


def _child(role: list[str], fd: int, cpu: int) -> subprocess.Popen[str]:
    cmd = ["taskset", "--cpu-list", str(cpu), sys.executable, "-m", "bench.server_loop",
           *role, "--fd", str(fd)]
    return subprocess.Popen(cmd, pass_fds=(fd,), stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env=child_env())


def run_once(variant: str, reads: int, cpu: int) -> dict[str, float]:
    """One server run of `reads` BAR reads: CPU us per read (server), wall us (client)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = _child(["--role", "server", "--variant", variant], a.fileno(), cpu)
    client = _child(["--role", "client", "--reads", str(reads)], b.fileno(), cpu)
    a.close()
    b.close()
    try:
        c_out, _ = client.communicate(timeout=_TIMEOUT_S)
        s_out, _ = server.communicate(timeout=_TIMEOUT_S)
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if client.returncode or server.returncode:
        raise RuntimeError(f"{variant}: client exited {client.returncode}, "
                           f"server {server.returncode}")
    s, c = json.loads(s_out), json.loads(c_out)
    return {"server_cpu_us": (s["user_s"] + s["sys_s"]) / reads * 1e6,
            "server_user_us": s["user_s"] / reads * 1e6,
            "server_sys_us": s["sys_s"] / reads * 1e6,
            "client_wall_us": c["client_wall_us"]}


def measure(reads: int, runs: int, cpu: int = 0) -> dict[str, list[dict[str, float]]]:
    """`runs` samples per variant, interleaved so that a drift in load hits both."""
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for _ in range(runs):
        for variant in VARIANTS:
            samples[variant].append(run_once(variant, reads, cpu))
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=("launch", "client", "server"), default="launch",
                   help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--reads", type=int, default=20000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cpu", type=int, default=0, help="CPU for both processes")
    args = p.parse_args(argv)
    if args.role == "client":
        _client(args.fd, args.reads)
        return 0
    if args.role == "server":
        _server(args.fd, args.variant)
        return 0
    for variant, runs in measure(args.reads, args.runs, args.cpu).items():
        for r in runs:
            print(f"{variant:>8}: server CPU {r['server_cpu_us']:6.2f} us/read "
                  f"(user {r['server_user_us']:.2f}, sys {r['server_sys_us']:.2f}), "
                  f"round trip {r['client_wall_us']:6.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
