"""The device core with the model backend, driven by the fake QEMU: enumeration, BAR sizing,
glibc numbers through the bridge, access sizes, UR, replies, fds, debugcon, shutdown."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from qbridge.core import DeviceCore, ProtocolError, TxLogEndpoint
from qbridge.proxy.transport import ProxyTransport

from bench.fake_qemu import (
    BAR_READ,
    CFGREAD,
    FakeQemu,
    bar_payload,
    config_payload,
)
from models.contract.regmap import IDENTITY, RNG_CAPS_VALUE, RNG_ID_VALUE
from models.contract.transaction import (
    Completion,
    Host,
    Kind,
    Request,
    Status,
    io_write_stream,
    stream_requests,
)
from models.device import Device

BAR0 = FakeQemu.BAR0
RNG, SEED, ID = BAR0 + 0x0, BAR0 + 0x4, BAR0 + 0x8


@dataclass
class Served:
    qemu: FakeQemu
    server: DeviceCore
    console: bytearray
    debugcon_path: str | None
    errors: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def finish(self, timeout: float = 10.0) -> None:
        """QEMU exits: close the proxy connection; serve() must return within `timeout`."""
        self.qemu.sock.close()
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"serve() still running {timeout} s after QEMU closed"


@contextmanager
def served(tmp_path, endpoint_wrapper: Callable | None = None, debugcon: bool = False,
           **kwargs) -> Iterator[Served]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    console = bytearray()
    endpoint = Device(console_sink=console.extend)
    if endpoint_wrapper is not None:
        endpoint = endpoint_wrapper(endpoint)
    listener = None
    path = None
    if debugcon:
        path = str(tmp_path / "dbg.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.setblocking(False)
    kwargs.setdefault("idle_poll", 0.05)
    server = DeviceCore(endpoint, ProxyTransport(b), listener, **kwargs)
    s = Served(FakeQemu(a), server, console, path)

    def run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # handed to the test thread
            s.errors.append(exc)

    s.thread = threading.Thread(target=run, daemon=True)
    s.thread.start()
    try:
        yield s
    finally:
        if s.thread.is_alive():
            a.close()
            s.thread.join(10)
        a.close()
        b.close()
        if listener is not None:
            listener.close()


def test_realize_reads_identity_and_sizes_only_bar0(tmp_path, glibc) -> None:
    with served(tmp_path) as s:
        seen = s.qemu.realize()
        s.finish()
    assert s.errors == [], f"serve() failed: {s.errors}"
    assert seen["vendor"] == IDENTITY.vendor, f"vendor {seen['vendor']:#x}"
    assert seen["device"] == IDENTITY.device, f"device {seen['device']:#x}"
    assert seen["class"] == IDENTITY.class_code >> 8, f"class {seen['class']:#x}"
    assert seen["subsystem"] == IDENTITY.subsystem, f"subsystem {seen['subsystem']:#x}"
    assert seen["size@0x10"] == 0xFFFFF000, f"BAR0 sizing read {seen['size@0x10']:#x}, not 4 KiB"
    for off in (0x14, 0x18, 0x1C, 0x20, 0x24, 0x28):
        assert seen[f"size@{off:#x}"] == 0, f"unimplemented BAR at {off:#x} sized as " \
                                            f"{seen[f'size@{off:#x}']:#x}"


def test_linux_enumeration_reads_whole_header(tmp_path) -> None:
    with served(tmp_path) as s:
        header = [s.qemu.cfg_read(off, 4) for off in range(0, 0x40, 4)]
        pin = s.qemu.cfg_read(0x3D, 1)
        s.qemu.cfg_write(0x3C, 11, 1)
        line = s.qemu.cfg_read(0x3C, 1)
        s.qemu.enable()
        bar = s.qemu.cfg_read(0x10)
        command = s.qemu.cfg_read(0x04, 2)
        s.finish()
    assert header[0] == IDENTITY.device << 16 | IDENTITY.vendor, f"DW0 {header[0]:#x}"
    assert header[2] == IDENTITY.class_code << 8 | IDENTITY.revision, f"DW2 {header[2]:#x}"
    assert header[0x2C // 4] == IDENTITY.subsystem << 16 | IDENTITY.subsystem_vendor, \
        f"subsystem DW {header[0x2C // 4]:#x}"
    assert (pin, line) == (1, 11), f"interrupt pin/line read {pin}/{line}, expected 1/11"
    assert bar == BAR0, f"BAR0 reads {bar:#x} after programming {BAR0:#x}"
    assert command & 0x2, f"COMMAND {command:#x}: memory space not enabled"


@pytest.mark.parametrize("seed", [0, 1, 42, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_rng_through_bridge_equals_glibc_after_seed(tmp_path, glibc, seed: int) -> None:
    with served(tmp_path) as s:
        s.qemu.realize()
        s.qemu.enable()
        s.qemu.bar_write(SEED, seed)
        got = [s.qemu.bar_read(RNG) for _ in range(8)]
        s.finish()
    assert got == glibc(seed, 8), f"seed {seed:#x}: bridge gave {got}, glibc {glibc(seed, 8)}"


def test_rng_before_any_seed_is_srand_1(tmp_path, glibc) -> None:
    with served(tmp_path) as s:
        s.qemu.enable()
        got = [s.qemu.bar_read(RNG) for _ in range(3)]
        s.finish()
    assert got == glibc(1, 3), f"unseeded device gave {got}, glibc srand(1) {glibc(1, 3)}"


def test_eight_byte_accesses_split_into_two_dwords(tmp_path, glibc) -> None:
    with served(tmp_path) as s:
        s.qemu.enable()
        # An 8-byte write at RNG: low DW to RNG (ignored), high DW to SEED.
        s.qemu.bar_write(RNG, 1234 << 32 | 0xDEADBEEF, 8)
        low_rng = s.qemu.bar_read(RNG, 8)  # RNG then SEED (reads 0)
        id_pair = s.qemu.bar_read(ID, 8)  # ID then CAPS
        rng64 = s.qemu.bar_read(BAR0 + 0x10, 8)  # RNG64: the next two numbers, low first
        s.finish()
    expect = glibc(1234, 3)
    assert low_rng == expect[0], f"8-byte read at RNG gave {low_rng:#x}, expected {expect[0]:#x}"
    want_ids = RNG_CAPS_VALUE << 32 | RNG_ID_VALUE
    assert id_pair == want_ids, f"8-byte read at ID gave {id_pair:#x}, expected {want_ids:#x}"
    want64 = expect[2] << 32 | expect[1]
    assert rng64 == want64, f"8-byte read of RNG64 gave {rng64:#x}, expected {want64:#x}"


def test_sub_word_accesses_select_byte_lanes(tmp_path, glibc) -> None:
    with served(tmp_path) as s:
        s.qemu.enable()
        s.qemu.bar_write(SEED, 7)
        numbers = glibc(7, 2)
        half = s.qemu.bar_read(RNG + 2, 2)  # the top half of the first number
        byte = s.qemu.bar_read(RNG, 1)  # the low byte of the second
        id_hi = s.qemu.bar_read(ID + 3, 1)
        id_mid = s.qemu.bar_read(ID + 1, 2)
        s.qemu.bar_write(SEED, 9, 2)  # a partial SEED write is ignored...
        after = s.qemu.bar_read(RNG)
        s.finish()
    assert half == numbers[0] >> 16, \
        f"2-byte read at RNG+2 {half:#x}, expected {numbers[0] >> 16:#x}"
    assert byte == numbers[1] & 0xFF, \
        f"1-byte read at RNG {byte:#x}, expected {numbers[1] & 0xFF:#x}"
    assert id_hi == RNG_ID_VALUE >> 24, f"ID byte 3 {id_hi:#x}"
    assert id_mid == RNG_ID_VALUE >> 8 & 0xFFFF, f"ID bytes 1-2 {id_mid:#x}"
    third = glibc(7, 3)[2]
    assert after == third, f"after a 2-byte SEED write: {after:#x}, the sequence gives {third:#x}"


def test_unsupported_requests_read_all_ones(tmp_path) -> None:
    with served(tmp_path) as s:
        before_enable = s.qemu.bar_read(RNG, 4)  # COMMAND.MEM clear
        s.qemu.enable()
        outside = s.qemu.bar_read(BAR0 + 0x1000, 4)  # just past BAR0
        wide = s.qemu.bar_read(BAR0 - 4, 8)  # low DW unclaimed, high DW is RNG
        io_other = s.qemu.bar_read(0x80, 1, memory=False)
        io_debugcon = s.qemu.bar_read(0xE9, 1, memory=False)
        s.finish()
    assert before_enable == 0xFFFFFFFF, f"read with memory disabled {before_enable:#x}"
    assert outside == 0xFFFFFFFF, f"read outside BAR0 {outside:#x}"
    assert wide & 0xFFFFFFFF == 0xFFFFFFFF, f"low (unclaimed) DW of straddling read {wide:#x}"
    assert io_other == 0xFF, f"I/O read of port 0x80 {io_other:#x}"
    assert io_debugcon == 0xE9, f"I/O read of port 0xe9 {io_debugcon:#x}, not 0xe9"


def test_reset_restores_config_and_generator(tmp_path, glibc) -> None:
    with served(tmp_path) as s:
        s.qemu.enable()
        s.qemu.bar_write(SEED, 99)
        s.qemu.bar_read(RNG)
        s.qemu.reset()
        bar = s.qemu.cfg_read(0x10)
        command = s.qemu.cfg_read(0x04, 2)
        s.qemu.enable()
        got = s.qemu.bar_read(RNG)
        s.finish()
    assert (bar, command) == (0, 0), f"after DEVICE_RESET BAR0={bar:#x} COMMAND={command:#x}"
    assert got == glibc(1, 1)[0], f"after reset the generator gave {got}, not srand(1)'s first"


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def test_sysmem_and_irqfd_get_no_reply_and_their_fds_are_closed(tmp_path) -> None:
    with served(tmp_path) as s:
        s.qemu.cfg_read(0x00, 2)  # a round trip: the server's event loop is up
        baseline = open_fds()
        region = os.memfd_create("ram")
        s.qemu.sync_sysmem([(0, 0x1000, 0)], [region])
        os.close(region)
        s.qemu.assert_no_reply()
        ev1, ev2 = os.eventfd(0), os.eventfd(0)
        s.qemu.set_irqfd(ev1, ev2)
        os.close(ev1)
        os.close(ev2)
        s.qemu.assert_no_reply()
        # The stream is still in step: the next request gets its own reply.
        assert s.qemu.cfg_read(0x00, 2) == IDENTITY.vendor, "reply stream out of step"
        held = open_fds() - baseline
        assert len(held) == 2, f"expected only the two irqfds held, found {sorted(held)}"
        ev3, ev4 = os.eventfd(0), os.eventfd(0)
        s.qemu.set_irqfd(ev3, ev4)  # the previous pair must be closed
        os.close(ev3)
        os.close(ev4)
        s.qemu.cfg_read(0x00, 2)  # a round trip, so the SET_IRQFD has been handled
        # The new pair is received while the old one is still open: four fds here would
        # mean the old pair leaked.
        replaced = open_fds() - baseline
        assert len(replaced) == 2, \
            f"previous irqfds not closed: held {sorted(held)}, now {sorted(replaced)}"
        regions = s.server.transport.sysmem
        s.finish()
    assert [(r.gpa, r.size, r.offset) for r in regions] == [(0, 0x1000, 0)], f"{regions}"
    left = open_fds() - baseline
    assert not left, f"fds left open after serve(): {sorted(left)}"


def test_debugcon_bytes_reach_the_console_in_order(tmp_path) -> None:
    text = bytes(range(256)) + b"hello from Linux\n"
    with served(tmp_path, debugcon=True) as s:
        dbg = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dbg.connect(s.debugcon_path)
        for i in range(0, len(text), 7):
            dbg.sendall(text[i:i + 7])
        time.sleep(0.1)
        s.qemu.cfg_read(0, 2)
        dbg.close()
        s.finish()
    assert s.errors == [], f"serve() failed: {s.errors}"
    assert bytes(s.console) == text, f"console got {bytes(s.console)!r}"
    assert s.server.debugcon_bytes == len(text), f"counted {s.server.debugcon_bytes} bytes"


def test_debugcon_bytes_sent_just_before_qemu_exits_are_kept(tmp_path) -> None:
    text = b"COSIM last words\n" * 50
    with served(tmp_path, debugcon=True) as s:
        dbg = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dbg.connect(s.debugcon_path)
        s.qemu.cfg_read(0, 2)  # the server has accepted debugcon by now or will at drain
        dbg.sendall(text)
        s.finish()  # proxy closes while the bytes may still be unread
        dbg.close()
    assert bytes(s.console) == text, f"console kept {len(s.console)} of {len(text)} bytes"


def test_qemu_closing_ends_serve_cleanly(tmp_path) -> None:
    with served(tmp_path) as s:
        s.qemu.realize()
        start = time.monotonic()
        s.finish()
    assert s.errors == [], f"serve() raised {s.errors} on a normal close"
    assert time.monotonic() - start < 2.0, "serve() was slow to notice QEMU closing"


def test_malformed_message_stops_serve_with_protocol_error(tmp_path) -> None:
    with served(tmp_path, message_timeout=0.5) as s:
        s.qemu.cfg_read(0, 2)
        s.qemu.send(CFGREAD, config_payload(0, 0, 3))
        assert s.thread is not None
        s.thread.join(5)
        assert not s.thread.is_alive(), "serve() hangs after a malformed message"
        s.qemu.assert_no_reply(0.1)
    assert len(s.errors) == 1 and isinstance(s.errors[0], ProtocolError), f"{s.errors}"
    assert "length 3" in str(s.errors[0]), f"unclear error: {s.errors[0]}"


def test_truncated_message_stops_serve_without_hanging(tmp_path) -> None:
    with served(tmp_path, message_timeout=0.3) as s:
        s.qemu.sock.sendall(config_payload(0, 0, 4)[:8])  # half a header, then silence
        assert s.thread is not None
        s.thread.join(5)
        assert not s.thread.is_alive(), "serve() hangs on a truncated message"
    assert s.errors and isinstance(s.errors[0], ProtocolError), f"{s.errors}"


class FailingEndpoint:
    def __init__(self, inner: Device) -> None:
        self.inner = inner

    async def transact(self, req: Request) -> Completion | None:
        raise RuntimeError("simulator died")

    async def transact_all(self, reqs: list[Request]) -> list[Completion | None]:
        raise RuntimeError("simulator died")

    async def reset(self) -> None:
        await self.inner.reset()

    async def drain_console(self) -> None:
        await self.inner.drain_console()


def test_backend_failure_stops_serve(tmp_path) -> None:
    with served(tmp_path, endpoint_wrapper=FailingEndpoint) as s:
        s.qemu.send(BAR_READ, bar_payload(RNG, 0, 4, True))
        assert s.thread is not None
        s.thread.join(5)
        assert not s.thread.is_alive(), "serve() hangs after a backend failure"
        s.qemu.assert_no_reply(0.1)
    assert len(s.errors) == 1 and "simulator died" in str(s.errors[0]), f"{s.errors}"


def _txlog_rows(text: str) -> list[str]:
    """A txlog's lines without the header and the host time (the wall clock, which
    differs between runs): `<sim time> <step> <transaction>`."""
    return [ln.split(" ", 1)[1] for ln in text.splitlines() if not ln.startswith("#")]


def _tx(row: str) -> str:
    """The transaction of a `_txlog_rows` row."""
    return row.split(" ", 2)[2]


def test_txlog_has_one_line_per_transaction(tmp_path) -> None:
    out = io.StringIO()
    ticks = iter(range(1000))
    with served(tmp_path, endpoint_wrapper=lambda ep: TxLogEndpoint(
            ep, out, now=lambda: f"t={next(ticks)}")) as s:
        s.qemu.cfg_read(0x00, 2)
        s.qemu.enable()  # cfg write, cfg read, cfg write
        s.qemu.bar_write(SEED, 5)  # posted: no completion
        s.qemu.bar_read(RNG, 8)  # two requests
        s.qemu.reset()
        s.finish()
    text = out.getvalue()
    assert text.startswith(TxLogEndpoint.HEADER), "no header line"
    stamps = [ln.split(" ", 1)[0] for ln in text.splitlines()[1:]]
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{6}", t) for t in stamps), stamps
    lines = _txlog_rows(text)
    assert len(lines) == 8, "expected 7 transactions and a reset:\n" + "\n".join(lines)
    assert lines[0].startswith("t=0 boot CFG_READ") and "CPL" in lines[0], lines[0]
    assert "MEM_WRITE" in lines[4] and lines[4].endswith("posted"), lines[4]
    assert lines[-1] == "t=7 boot RESET", lines[-1]


def test_txlog_lines_reach_the_file_within_the_flush_window_while_qemu_idles(tmp_path) -> None:
    # The txlog is buffered (a flush per access cost a third of a guest read), but a
    # line must never wait longer than `flush_after` for the file, busy or idle.
    path = tmp_path / "txlog"
    with open(path, "w") as out, served(tmp_path, endpoint_wrapper=lambda ep: TxLogEndpoint(
            ep, out, flush_after=0.05), idle_poll=30.0) as s:
        s.qemu.enable()
        s.qemu.bar_read(RNG, 4)
        deadline = time.monotonic() + 5.0  # generous for a loaded host; expected ~0.05 s
        while "MEM_READ" not in path.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        text = path.read_text()
        s.finish()
    assert "MEM_READ" in text, f"the read's txlog line was not written while idle:\n{text}"


def _connect_debugcon(s: Served) -> socket.socket:
    assert s.debugcon_path is not None
    dbg = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dbg.connect(s.debugcon_path)
    return dbg


def test_debugcon_burst_of_64_kib_is_served_byte_exact_before_the_next_access(
        tmp_path) -> None:
    # More than one recv() takes (DEBUGCON_CHUNK), sent at once as QEMU queues it when the
    # server is busy, then an access: the core's ordering rule (debugcon bytes the vCPU
    # wrote first reach the device first) must hold for the whole burst, each byte one
    # IO_WRITE of port 0xe9 (DW 0xe8, lane 1) in order, with consecutive tags.
    text = bytes((i * 7 + i // 256) & 0xFF for i in range(64 * 1024 + 100))
    out = io.StringIO()
    with served(tmp_path, endpoint_wrapper=lambda ep: TxLogEndpoint(ep, out),
                debugcon=True) as s:
        dbg = _connect_debugcon(s)
        start = time.monotonic()
        dbg.sendall(text)
        s.qemu.cfg_read(0, 2)
        seen_at_reply = bytes(s.console)
        elapsed = time.monotonic() - start
        dbg.close()
        s.finish()
    assert s.errors == [], f"serve() failed: {s.errors}"
    assert seen_at_reply == text, \
        f"at the access's reply the console had {len(seen_at_reply)} of {len(text)} bytes"
    assert bytes(s.console) == text, "console differs at the end"
    lines = [_tx(row) for row in _txlog_rows(out.getvalue())]
    assert len(lines) == len(text) + 1 and lines[-1].startswith("CFG_READ"), \
        f"{len(lines)} txlog lines, the last {lines[-1]!r}"
    tags = [int(line.split()[1][4:]) for line in lines[:-1]]
    assert all(line.startswith("IO_WRITE") and " addr=0xe8 be=0b0010 " in line
               for line in lines[:-1]), "a debugcon byte is not an IO_WRITE of 0xe9"
    assert tags == [(tags[0] + i) & 0xFF for i in range(len(text))], "tags not consecutive"
    assert elapsed < 10.0, f"64 KiB took {elapsed:.1f} s on the model"


def test_debugcon_bytes_and_bar_accesses_keep_their_order(tmp_path) -> None:
    # Interleaved as one vCPU does them: debugcon bytes (sizes below, at and above one
    # recv), then an access on the transport; after each reply the console holds every
    # byte sent before it, and the txlog lists each access after exactly those bytes.
    sizes = [1, 7, 4096, 64 * 1024, 64 * 1024 + 1, 3, 70_000]
    out = io.StringIO()
    sent = b""
    console_at: list[int] = []
    with served(tmp_path, endpoint_wrapper=lambda ep: TxLogEndpoint(ep, out),
                debugcon=True) as s:
        dbg = _connect_debugcon(s)
        s.qemu.enable()
        for i, n in enumerate(sizes):
            chunk = bytes((i + j) & 0xFF for j in range(n))
            dbg.sendall(chunk)
            sent += chunk
            if i % 3 == 0:
                s.qemu.bar_write(SEED, i)
            elif i % 3 == 1:
                s.qemu.bar_read(RNG, 4)
            else:
                s.qemu.bar_read(0xE9, 1, memory=False)  # the I/O read QEMU never sends
            console_at.append(len(s.console))
        dbg.close()
        s.finish()
    assert s.errors == [], f"serve() failed: {s.errors}"
    assert bytes(s.console) == sent, "console differs"
    want_at = [sum(sizes[:i + 1]) for i in range(len(sizes))]
    assert console_at == want_at, f"bytes seen at each reply {console_at}, sent {want_at}"
    kinds = [_tx(row).split()[0] for row in _txlog_rows(out.getvalue())]
    accesses = {0: "MEM_WRITE", 1: "MEM_READ", 2: "IO_READ"}
    want = ["CFG_WRITE", "CFG_READ", "CFG_WRITE"]  # enable()
    for i, n in enumerate(sizes):
        want += ["IO_WRITE"] * n + [accesses[i % 3]]
    assert kinds == want, "txlog order differs from the order of the stream and accesses"


class _NoStream:
    """An endpoint without `io_write_stream`: the core's slow path (`transact_all`)."""

    def __init__(self, inner: Device) -> None:
        self.inner = inner

    async def transact(self, req: Request) -> Completion | None:
        return await self.inner.transact(req)

    async def transact_all(self, reqs: list[Request]) -> list[Completion | None]:
        return await self.inner.transact_all(reqs)

    async def reset(self) -> None:
        await self.inner.reset()

    async def drain_console(self) -> None:
        await self.inner.drain_console()


@pytest.mark.parametrize("port", [0xE9, 0xE8, 0x80])  # the debugcon; unclaimed ports (UR)
def test_debugcon_stream_writes_what_the_slow_path_writes(port: int) -> None:
    # `io_write_stream` (the model's own, the txlog's precomputed lines) against
    # `transact_all` of the same Request objects and `io_write` per byte: the same txlog
    # lines (tags, data lane, completions, stamps), the same console bytes, the same
    # completions and the same next tag.
    data = bytes(range(256)) * 2 + b"tail"

    def run(stream: bool, per_byte: bool = False) -> tuple[str, bytes, list[str], int]:
        console = bytearray()
        ticks = iter(range(10_000))
        out = io.StringIO()
        model = Device(console.extend)
        ep = TxLogEndpoint(model if stream else _NoStream(model), out,
                           now=lambda: f"{next(ticks)}ns")
        host = Host(ep)

        async def go() -> list[str]:
            await host.io_write(0xE9, 0x41, 1)  # tags start mid-way
            if per_byte:
                for byte in data:
                    await host.io_write(port, byte, 1)
                return []
            cpls = await host.io_write_each(port, data)
            return [str(cpls.completion(i)) for i in range(len(cpls))]

        got = asyncio.run(go())
        return "\n".join(_txlog_rows(out.getvalue())), bytes(console), got, host._tag

    fast, slow, each = run(True), run(False), run(False, per_byte=True)
    assert fast[0] == slow[0] == each[0], "txlog lines differ from the slow path's"
    assert fast[1] == slow[1] == each[1], "console bytes differ"
    assert fast[2] == slow[2], "completions differ"
    assert fast[3] == slow[3] == each[3], "the next tag differs"
    assert len(fast[0].splitlines()) == len(data) + 1


def test_txlog_stream_lines_without_stamps_match_str_of_request_and_completion() -> None:
    out = io.StringIO()
    ep = TxLogEndpoint(Device(), out)
    cpls = asyncio.run(io_write_stream(ep, 0xE9, b"\x00\x7f\xff", 254))
    want = [f"{req} [DEBUGCON] -> {cpls.completion(i)}"
            for i, req in enumerate(stream_requests(0xE9, b"\x00\x7f\xff", 254))]
    assert [_tx(row) for row in _txlog_rows(out.getvalue())] == want
    assert cpls.uniform == (Status.SC, 0) and [r.tag for r in
                                               stream_requests(0xE9, b"abc", 254)] == [254, 255, 0]


class _Guest:
    """A `HostPort` that takes the device's requests and answers reads with zeros."""

    def memory_write(self, req: Request) -> None:
        pass

    def memory_read(self, req: Request) -> Completion:
        return Completion(req.tag)

    def intx(self, asserted: bool) -> None:
        pass


def test_txlog_names_registers_and_attributes_each_line_to_the_guest_step() -> None:
    # What a guest does, and what the register map (docs/registers.md) calls each access:
    # the names are written out here, not taken from the code under test.
    bar = 0xFEBF_0000
    out = io.StringIO()
    ep = TxLogEndpoint(Device(), out)
    ep.host = _Guest()
    host = Host(ep)

    async def go() -> None:
        await host.mem_read(bar, 4)  # before BAR0 is set: nothing claims it
        await host.cfg_write(0x10, bar)
        await host.cfg_write(0x04, 0x6)  # memory decoding, bus master
        for i, word in enumerate((b"rng_", b"ref ", b"    ", b"    ")):
            await host.cfg_write(0xF0 + 4 * i, int.from_bytes(word, "little"))
        await host.mem_write(bar + 0x4, 7)
        await host.mem_read(bar + 0x10, 8)
        await host.mem_read(bar + 0x24, 4)
        await host.mem_read(bar + 0x38, 4)
        await host.cfg_read(0x50, 4)
        await host.cfg_write(0x44, 0xFEE0_0000)  # the MSI address
        await host.io_write(0xE9, 0x41, 1)
        ep.host.memory_write(Request(Kind.MEM_WRITE, 0x10_0000, data=1))
        ep.host.memory_write(Request(Kind.MEM_WRITE, 0xFEE0_0000, data=0x21))
        for i, word in enumerate((b"next", b"_ste", b"p", b"")):  # short: NUL padded
            await host.cfg_write(0xF0 + 4 * i, int.from_bytes(word, "little"))
        await host.mem_read(bar, 4)

    asyncio.run(go())
    got = [(row.split(" ", 2)[1], re.search(r"\[(.*?)\]", row).group(1))
           for row in _txlog_rows(out.getvalue())]
    mark = [("boot", "STEP_MARK")] * 3 + [("rng_ref", "STEP_MARK")]
    want = [("boot", "unclaimed"), ("boot", "BAR0"), ("boot", "COMMAND_STATUS"), *mark,
            ("rng_ref", "SEED"), ("rng_ref", "RNG64"), ("rng_ref", "RNG64+4"),
            ("rng_ref", "DMA_ADDR+4"), ("rng_ref", "BAR0+0x38"), ("rng_ref", "CFG+0x50"),
            ("rng_ref", "MSI_ADDRESS"), ("rng_ref", "DEBUGCON"), ("rng_ref", "host memory"),
            ("rng_ref", "MSI"), *[("rng_ref", "STEP_MARK")] * 3, ("next_step", "STEP_MARK"),
            ("next_step", "RNG")]
    assert got == want, "\n".join(_txlog_rows(out.getvalue()))
