"""Bridge input fuzzer: hostile x-pci-proxy-dev streams against the device server.

    python -m bench.robustness.fuzz_bridge [--inputs 100000] [--seed 1] [--json FILE]

Each input is one connection to a `DeviceCore` serving ONE long-lived golden-model
`Device` (state carries over between connections, as it would across QEMU reconnects):

    probe (valid: program BAR0 + COMMAND.MEM, read RNG, BAR0, COMMAND, ID)
    + 0..4 random valid messages + a tail

The tail is one of: random bytes, a mutated valid message (bytes flipped, truncated or
extended, random fds), a truncated header, a payload size over 192, an unknown command or
a RET, a payload length not the command's, bad field values (config length / range /
value width, BAR size / value width / address wrap), fds on a message that takes none
(or a wrong count on SYNC_SYSMEM / SET_IRQFD), a peer closing mid-payload, a peer
stalling mid-message, or nothing (a clean close).

The oracle is independent of `qbridge.proxy.protocol`: `classify()` below decodes the
byte stream from the rules of docs/bridge-protocol.md sections 2 and 5 with its own
struct layouts, and a shadow `models.device.Device` executes every message it deems
valid.  Per input the run checks that the server
- answers exactly the valid messages that want a RET, with the shadow's values, in order;
- ends with `ProtocolError` (one clear line) exactly when the oracle found a bad message,
  and returns normally exactly when the stream ended cleanly; any other exception (a
  traceback in the CLI) is a failure;
- never hangs (a SIGALRM watchdog per input) and leaks no fd (`/proc/self/fd`);
so every later probe proves the device state (config space, RNG sequence) is exactly the
model's.  `tests/test_robust_bridge_fuzz.py` runs the same engine under hypothesis.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qbridge.core import DeviceCore, ProtocolError
from qbridge.proxy.transport import ProxyTransport

from models.contract.regmap import BAR0_TEST_BASE
from models.contract.transaction import Host, Space
from models.device import Device

log = logging.getLogger("cosim.bench.fuzz")

# -- wire format, written again from docs/bridge-protocol.md section 2 (not imported) ----
SYNC_SYSMEM, RET, CFGWRITE, CFGREAD, BAR_WRITE, BAR_READ, SET_IRQFD, DEVICE_RESET = range(8)
HDR = struct.Struct("<i4xQ")
CFG = struct.Struct("<IIi")
BAR = struct.Struct("<QQIB3x")
MAX_PAYLOAD = 192
PAYLOAD_SIZE = {SYNC_SYSMEM: 192, CFGWRITE: 12, CFGREAD: 12, BAR_WRITE: 24, BAR_READ: 24,
                SET_IRQFD: 0, DEVICE_RESET: 0}
WANTS_REPLY = {CFGWRITE, CFGREAD, BAR_WRITE, BAR_READ, DEVICE_RESET}
CONFIG_LIMIT = 0x1000
BAR0 = BAR0_TEST_BASE

STALL_TIMEOUT_S = 0.05  # "stalled" inputs: the peer stall is noticed quickly
MESSAGE_TIMEOUT_S = 2.0  # all other inputs are queued completely before serving starts
WATCHDOG_S = 5.0  # an input still being served after this is a hang


@dataclass(frozen=True)
class Chunk:
    """One sendmsg: bytes and how many fds ride on it (fds only on chunks that start a
    message, as QEMU sends them)."""

    data: bytes
    nfds: int = 0


@dataclass(frozen=True)
class Op:
    """A valid message's meaning: what the shadow device executes."""

    cmd: int
    addr: int = 0
    val: int = 0
    size: int = 0
    memory: bool = True


@dataclass
class Input:
    chunks: list[Chunk]
    category: str
    eof: bool = True  # False: the peer stalls (keeps the connection open, sends no more)


# -- message builders ---------------------------------------------------------------------
def msg(cmd: int, payload: bytes = b"", size: int | None = None) -> bytes:
    return HDR.pack(cmd, len(payload) if size is None else size) + payload


def encode(op: Op) -> Chunk:
    if op.cmd in (CFGREAD, CFGWRITE):
        return Chunk(msg(op.cmd, CFG.pack(op.addr, op.val, op.size)))
    if op.cmd in (BAR_READ, BAR_WRITE):
        return Chunk(msg(op.cmd, BAR.pack(op.addr, op.val, op.size, int(op.memory))))
    if op.cmd == SYNC_SYSMEM:
        return Chunk(msg(SYNC_SYSMEM, bytes(192)), op.size)
    if op.cmd == SET_IRQFD:
        return Chunk(msg(SET_IRQFD), 2)
    return Chunk(msg(DEVICE_RESET))


# Every connection starts by (re)programming BAR0 and COMMAND.MEM, as Linux does, so the
# RNG is reachable whatever the previous input did (reset, config writes), then reads the
# RNG and the config registers that decode it.
PROBE = [Op(CFGWRITE, 0x10, BAR0, 4), Op(CFGWRITE, 0x04, 0x2, 2), Op(BAR_READ, BAR0, 0, 4),
         Op(CFGREAD, 0x10, 0, 4), Op(CFGREAD, 0x04, 0, 2), Op(CFGREAD, 0x00, 0, 4)]


def random_valid_op(rnd: random.Random) -> Op:
    """Mostly accesses that matter (RNG/SEED/ID, config header), sometimes anything."""
    pick = rnd.random()
    if pick < 0.3:
        return Op(BAR_READ, BAR0 + rnd.choice([0, 0, 4, 8, 12, rnd.randrange(0x1010)]), 0,
                  rnd.choice([1, 2, 4, 8]), rnd.random() < 0.95)
    if pick < 0.45:
        size = rnd.choice([1, 2, 4, 4, 8])
        return Op(BAR_WRITE, BAR0 + rnd.choice([0, 4, 4, 8, rnd.randrange(0x1010)]),
                  rnd.getrandbits(8 * size) if rnd.random() < 0.5 else rnd.randrange(100),
                  size, rnd.random() < 0.95)
    if pick < 0.65:
        length = rnd.choice([1, 2, 4])
        return Op(CFGREAD, rnd.randrange(0, CONFIG_LIMIT - length + 1) if rnd.random() < 0.2
                  else rnd.randrange(0x40), 0, length)
    if pick < 0.85:
        length = rnd.choice([1, 2, 4])
        addr = rnd.randrange(0x40) if rnd.random() < 0.9 else rnd.randrange(CONFIG_LIMIT - 4)
        if addr in (0x10, 0x04) and rnd.random() < 0.7:
            addr += 0x20  # keep BAR0 / COMMAND mostly intact so the RNG stays reachable
        return Op(CFGWRITE, addr, rnd.getrandbits(8 * length), length)
    if pick < 0.9:
        return Op(DEVICE_RESET)
    if pick < 0.95:
        return Op(SYNC_SYSMEM, size=rnd.randint(1, 8))
    return Op(SET_IRQFD)


def _bad_fields(rnd: random.Random) -> Chunk:
    kind = rnd.randrange(6)
    if kind == 0:
        return Chunk(msg(rnd.choice([CFGREAD, CFGWRITE]), CFG.pack(
            rnd.randrange(0x40), 0, rnd.choice([0, 3, 5, 8, -1, rnd.randint(-2**31, 2**31 - 1)]))))
    if kind == 1:
        length = rnd.choice([1, 2, 4])
        return Chunk(msg(rnd.choice([CFGREAD, CFGWRITE]), CFG.pack(
            rnd.randint(CONFIG_LIMIT - length + 1, 2**32 - 1), 0, length)))
    if kind == 2:
        length = rnd.choice([1, 2])
        return Chunk(msg(CFGWRITE, CFG.pack(0x3C, rnd.randint(1 << 8 * length, 2**32 - 1),
                                            length)))
    if kind == 3:
        return Chunk(msg(rnd.choice([BAR_READ, BAR_WRITE]), BAR.pack(
            BAR0, 0, rnd.choice([0, 3, 5, 6, 7, 9, 16, rnd.randrange(2**32)]), 1)))
    if kind == 4:
        size = rnd.choice([1, 2, 4])
        return Chunk(msg(BAR_WRITE, BAR.pack(BAR0 + 4, rnd.randint(1 << 8 * size, 2**64 - 1),
                                             size, 1)))
    size = rnd.choice([2, 4, 8])
    return Chunk(msg(rnd.choice([BAR_READ, BAR_WRITE]), BAR.pack(
        2**64 - rnd.randint(1, size - 1), 0, size, rnd.randrange(2))))


def _mutate(rnd: random.Random, chunk: Chunk) -> Chunk:
    data = bytearray(chunk.data)
    for _ in range(rnd.randint(1, 4)):
        how = rnd.randrange(4)
        if how == 0 and data:
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        elif how == 1 and data:
            data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        elif how == 2:
            del data[rnd.randrange(len(data) + 1):]
        else:
            data += rnd.randbytes(rnd.randint(1, 24))
    nfds = rnd.choice([chunk.nfds, chunk.nfds, 0, 1, 2, 3])
    return Chunk(bytes(data), nfds if data else 0)


CATEGORIES = ("random-bytes", "mutated", "truncated-header", "oversize", "unknown-cmd",
              "bad-length", "bad-fields", "wrong-fds", "closed-mid-message", "clean-close",
              "stalled")


def make_input(rnd: random.Random, category: str | None = None) -> Input:
    if category is None:
        # Stalls cost STALL_TIMEOUT_S each: rare.
        category = "stalled" if rnd.random() < 0.002 else rnd.choice(CATEGORIES[:-1])
    ops = PROBE + [random_valid_op(rnd) for _ in range(rnd.randint(0, 4))]
    chunks = [encode(op) for op in ops]
    eof = True
    tail: Chunk | None
    match category:
        case "random-bytes":
            tail = Chunk(rnd.randbytes(rnd.randint(1, 300)))
        case "mutated":
            tail = _mutate(rnd, encode(random_valid_op(rnd)))
        case "truncated-header":
            tail = Chunk(encode(random_valid_op(rnd)).data[:rnd.randint(1, 15)])
        case "oversize":
            size = rnd.choice([193, 200, 4096, 2**32, 2**64 - 1, rnd.randint(193, 2**64 - 1)])
            tail = Chunk(msg(rnd.randrange(8), rnd.randbytes(rnd.randint(0, 64)), size))
        case "unknown-cmd":
            cmd = rnd.choice([RET, 8, 9, -1, 2**31 - 1, -2**31, rnd.randint(-2**31, 2**31 - 1)])
            if 0 <= cmd <= 7 and cmd != RET:
                cmd = 8
            tail = Chunk(msg(cmd, bytes(12)))
        case "bad-length":
            cmd = rnd.choice([c for c in range(8) if c != RET])
            size = rnd.choice([s for s in range(0, 193) if s != PAYLOAD_SIZE[cmd]])
            tail = Chunk(msg(cmd, rnd.randbytes(size)), 2 if cmd == SET_IRQFD else
                         1 if cmd == SYNC_SYSMEM else 0)
        case "bad-fields":
            tail = _bad_fields(rnd)
        case "wrong-fds":
            op = random_valid_op(rnd)
            good = encode(op)
            if op.cmd == SYNC_SYSMEM:
                nfds = rnd.choice([0, 9, 12])
            elif op.cmd == SET_IRQFD:
                nfds = rnd.choice([0, 1, 3, 8])
            else:
                nfds = rnd.randint(1, 8)
            tail = Chunk(good.data, nfds)
        case "closed-mid-message":
            good = encode(rnd.choice([Op(CFGREAD, 0, 0, 4), Op(BAR_WRITE, BAR0 + 4, 5, 4),
                                      Op(SYNC_SYSMEM, size=1)]))
            tail = Chunk(good.data[:rnd.randint(16, len(good.data) - 1)], good.nfds)
        case "clean-close":
            tail = None
        case "stalled":
            good = encode(Op(BAR_READ, BAR0, 0, 4))
            tail = Chunk(good.data[:rnd.randint(1, len(good.data) - 1)])
            eof = False
        case _:
            raise ValueError(f"unknown fuzz category {category!r}")
    if tail is not None:
        chunks.append(tail)
    return Input(chunks, category, eof)


# -- the independent oracle ---------------------------------------------------------------
@dataclass
class Verdict:
    ops: list[Op]  # the valid messages, in order, before the first bad one
    error: str | None  # why the stream is bad (None: it ends cleanly)


def classify(chunks: Sequence[Chunk], eof: bool = True) -> Verdict:
    """Decode the stream as docs/bridge-protocol.md says the server must."""
    stream = b"".join(c.data for c in chunks)
    fds_at: dict[int, int] = {}
    pos = 0
    for c in chunks:
        if c.nfds:
            fds_at[pos] = c.nfds
        pos += len(c.data)
    ops: list[Op] = []
    pos = 0
    while True:
        nfds = fds_at.get(pos, 0)
        rest = len(stream) - pos
        if rest == 0:
            return Verdict(ops, None if eof else "stalled between messages")
        if rest < HDR.size:
            return Verdict(ops, "truncated header")
        cmd, size = HDR.unpack_from(stream, pos)
        if size > MAX_PAYLOAD:
            return Verdict(ops, "payload size over 192")
        if rest < HDR.size + size:
            return Verdict(ops, "closed or stalled mid-message")
        if cmd not in PAYLOAD_SIZE:
            return Verdict(ops, "unknown command or RET")
        if size != PAYLOAD_SIZE[cmd]:
            return Verdict(ops, "wrong payload size")
        wanted = range(1, 9) if cmd == SYNC_SYSMEM else range(2, 3) if cmd == SET_IRQFD \
            else range(0, 1)
        if nfds not in wanted:
            return Verdict(ops, "wrong fd count")
        payload = stream[pos + HDR.size:pos + HDR.size + size]
        if cmd in (CFGREAD, CFGWRITE):
            addr, val, length = CFG.unpack(payload)
            if length not in (1, 2, 4) or addr + length > CONFIG_LIMIT:
                return Verdict(ops, "bad config access")
            if cmd == CFGWRITE and val >> 8 * length:
                return Verdict(ops, "config value too wide")
            ops.append(Op(cmd, addr, val, length))
        elif cmd in (BAR_READ, BAR_WRITE):
            addr, val, bsize, memory = BAR.unpack(payload)
            if bsize not in (1, 2, 4, 8) or addr + bsize > 2**64:
                return Verdict(ops, "bad BAR access")
            if cmd == BAR_WRITE and val >> 8 * bsize:
                return Verdict(ops, "BAR value too wide")
            ops.append(Op(cmd, addr, val, bsize, memory != 0))
        else:
            ops.append(Op(cmd, size=nfds))
        pos += HDR.size + size


async def execute(host: Host, op: Op) -> int | None:
    """Run a valid message on `host` as the server's dispatch table (docs section 4) says;
    the RET value, or None when the message gets no reply."""
    space = Space.MEM if op.memory else Space.IO
    match op.cmd:
        case 3:  # CFGREAD
            return await host.cfg_read(op.addr, op.size)
        case 2:  # CFGWRITE
            await host.cfg_write(op.addr, op.val, op.size)
        case 5:  # BAR_READ
            return await host.read(space, op.addr, op.size)
        case 4:  # BAR_WRITE
            await host.write(space, op.addr, op.val, op.size)
        case 7:  # DEVICE_RESET
            await host.endpoint.reset()
        case _:
            return None
    return 0


# -- the harness ----------------------------------------------------------------------------
class Hang(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise Hang(f"an input was still being served after {WATCHDOG_S} s")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Outcome:
    category: str
    error: str | None = None  # the server's ProtocolError text
    failure: str | None = None  # what differed from the oracle (None: all good)


@dataclass
class Fuzzer:
    """One server-side `Device` and its shadow, fed input after input."""

    device: Device = field(default_factory=Device)
    shadow: Device = field(default_factory=Device)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.host = Host(self.device)
        self.shadow_host = Host(self.shadow)

    def close(self) -> None:
        self.loop.close()

    def run(self, inp: Input) -> Outcome:
        self.counts["inputs"] += 1
        self.counts[inp.category] += 1
        out = self._run(inp)
        if out.error is not None:
            self.counts["rejected"] += 1
        if out.failure is not None:
            self.counts["failures"] += 1
            self.resync()
        return out

    def resync(self) -> None:
        """After a failure, a fresh device and shadow, so that later inputs are judged on
        their own and one failure is counted once."""
        self.device, self.shadow = Device(), Device()
        self.host, self.shadow_host = Host(self.device), Host(self.shadow)

    def _run(self, inp: Input) -> Outcome:
        out = Outcome(inp.category)
        verdict = classify(inp.chunks, inp.eof)
        expected: list[int] = []
        for op in verdict.ops:
            value = self.loop.run_until_complete(execute(self.shadow_host, op))
            if value is not None:
                expected.append(value)
        before = open_fds()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for chunk in inp.chunks:
                fds = [os.eventfd(0) for _ in range(chunk.nfds)]
                try:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] \
                        if fds else []
                    a.sendmsg([chunk.data], anc)
                finally:
                    for fd in fds:
                        os.close(fd)
            if inp.eof:
                a.shutdown(socket.SHUT_WR)
            server = DeviceCore(self.device, ProxyTransport(b), idle_poll=0.01, message_timeout=(
                MESSAGE_TIMEOUT_S if inp.eof else STALL_TIMEOUT_S))
            signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
            try:
                self.loop.run_until_complete(server.serve())
            except ProtocolError as exc:
                out.error = str(exc)
            except Hang as exc:
                self.counts["hangs"] += 1
                out.failure = str(exc)
                return out
            except Exception as exc:  # would be a traceback in the CLI
                out.failure = f"server raised {type(exc).__name__}: {exc}"
                return out
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            b.close()
            replies = _read_all(a)
        finally:
            a.close()
            b.close()
        got = [HDR.unpack_from(replies, i) + struct.unpack_from("<Q", replies, i + 16)
               for i in range(0, len(replies) - len(replies) % 24, 24)]
        want = [(RET, 8, v) for v in expected]
        if len(replies) % 24 or got != want:
            out.failure = (f"replies {[hex(g[2]) for g in got]} (+{len(replies) % 24} bytes), "
                           f"the model says {[hex(v) for v in expected]}")
        elif (verdict.error is None) != (out.error is None):
            out.failure = (f"the oracle says {verdict.error or 'clean end'}, the server "
                           f"{'raised ' + repr(out.error) if out.error else 'ended cleanly'}")
        elif out.error is not None and (not out.error.strip() or "\n" in out.error):
            out.failure = f"unclear error message {out.error!r}"
        elif open_fds() != before:
            out.failure = f"fd leak: {before} open before, {open_fds()} after"
        return out


def _read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def install_watchdog() -> None:
    signal.signal(signal.SIGALRM, _on_alarm)


def run(inputs: int, seed: int, max_failures: int = 20) -> dict[str, object]:
    install_watchdog()
    rnd = random.Random(seed)
    fuzzer = Fuzzer()
    failures: list[dict[str, str]] = []
    start = time.monotonic()
    # The server logs every protocol error at debug level through cosim.bridge; silence
    # it here (the harness checks each error itself).
    logging.getLogger("cosim.bridge").setLevel(logging.CRITICAL)
    try:
        for i in range(inputs):
            out = fuzzer.run(make_input(rnd))
            if out.failure is not None:
                failures.append({"input": str(i), "category": out.category,
                                 "failure": out.failure})
                log.error("input %d (%s): %s", i, out.category, out.failure)
                if len(failures) >= max_failures:
                    break
            if (i + 1) % 10000 == 0:
                log.info("%d inputs, %d rejected, %d failures", i + 1,
                         fuzzer.counts["rejected"], fuzzer.counts["failures"])
    finally:
        fuzzer.close()
    return {
        "inputs": fuzzer.counts["inputs"],
        "rejected": fuzzer.counts["rejected"],
        "hangs": fuzzer.counts["hangs"],
        "failures": fuzzer.counts["failures"],
        "categories": {c: fuzzer.counts[c] for c in CATEGORIES},
        "seconds": round(time.monotonic() - start, 1),
        "seed": seed,
        "first_failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.robustness.fuzz_bridge",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=100000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
    result = run(args.inputs, args.seed)
    print(f"fuzz_bridge: {result['inputs']} inputs, {result['rejected']} rejected, "
          f"{result['hangs']} hangs, {result['failures']} failures "
          f"in {result['seconds']} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
