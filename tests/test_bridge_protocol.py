"""The x-pci-proxy-dev parser (qbridge.proxy.protocol) against messages built by the fake
QEMU's independent struct layouts: every command, every malformation, fd hygiene."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qbridge.proxy.protocol import (
    BarAccess,
    Cmd,
    ConfigAccess,
    ProtocolError,
    SyncSysmem,
    SysmemRegion,
    pack_reply,
    recv_message,
)

from bench.fake_qemu import (
    BAR_READ,
    BAR_WRITE,
    CFGREAD,
    CFGWRITE,
    DEVICE_RESET,
    RET,
    SET_IRQFD,
    SYNC_SYSMEM,
    FakeQemu,
    bar_payload,
    config_payload,
    header,
    sysmem_payload,
)
from models.contract.regmap import BAR0_TEST_BASE

TIMEOUT = 1.0


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def pair() -> Iterator[tuple[FakeQemu, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield FakeQemu(a), b
    a.close()
    b.close()


def make_fds(n: int) -> list[int]:
    fds = []
    for _ in range(n):
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    return fds


def test_wire_layouts_have_qemu_sizes() -> None:
    assert len(header(0, 0)) == 16, "header is not 16 bytes"
    assert len(config_payload(0, 0, 4)) == 12, "PciConfDataMsg is not 12 bytes"
    assert len(bar_payload(0, 0, 4, True)) == 24, "BarAccessMsg is not 24 bytes"
    assert len(sysmem_payload([])) == 192, "SyncSysmemMsg is not 192 bytes"
    assert pack_reply(0x1122334455667788) == struct.pack("<i4xQQ", RET, 8, 0x1122334455667788), \
        "RET reply is not cmd 1, size 8, u64 value"


def test_config_messages_decode(pair: tuple[FakeQemu, socket.socket]) -> None:
    qemu, srv = pair
    qemu.send(CFGREAD, config_payload(0x2E, 0, 2))
    qemu.send(CFGWRITE, config_payload(0x10, 0xFFFFFFFF, 4))
    first = recv_message(srv, TIMEOUT)
    second = recv_message(srv, TIMEOUT)
    assert first is not None and second is not None
    assert (first.cmd, first.payload) == (Cmd.PCI_CFGREAD, ConfigAccess(0x2E, 0, 2)), str(first)
    assert (second.cmd, second.payload) == (Cmd.PCI_CFGWRITE, ConfigAccess(0x10, 0xFFFFFFFF, 4)), \
        str(second)
    assert first.wants_reply and second.wants_reply, "config accesses must be replied to"


def test_bar_messages_decode(pair: tuple[FakeQemu, socket.socket]) -> None:
    qemu, srv = pair
    qemu.send(BAR_READ, bar_payload(BAR0_TEST_BASE, 0, 8, True))
    qemu.send(BAR_WRITE, bar_payload(0xE9, 0x41, 1, False))
    first = recv_message(srv, TIMEOUT)
    second = recv_message(srv, TIMEOUT)
    assert first is not None and second is not None
    assert first.payload == BarAccess(BAR0_TEST_BASE, 0, 8, True), str(first)
    assert second.payload == BarAccess(0xE9, 0x41, 1, False), str(second)
    assert first.wants_reply and second.wants_reply, "BAR accesses must be replied to"


def test_reset_wants_reply_and_sysmem_irqfd_do_not(pair: tuple[FakeQemu, socket.socket]) -> None:
    qemu, srv = pair
    qemu.send(DEVICE_RESET)
    fds = make_fds(4)
    qemu.send(SYNC_SYSMEM, sysmem_payload([(0, 0xA0000, 0), (0x100000, 0x7F00000, 0x100000)]),
              fds[:2])
    qemu.send(SET_IRQFD, b"", fds[2:])
    reset, sysmem, irqfd = (recv_message(srv, TIMEOUT) for _ in range(3))
    assert reset is not None and sysmem is not None and irqfd is not None
    assert reset.cmd is Cmd.DEVICE_RESET and reset.wants_reply, str(reset)
    assert sysmem.payload == SyncSysmem((SysmemRegion(0, 0xA0000, 0),
                                         SysmemRegion(0x100000, 0x7F00000, 0x100000))), str(sysmem)
    assert not sysmem.wants_reply and not irqfd.wants_reply, \
        "QEMU never waits for a reply to SYNC_SYSMEM or SET_IRQFD"
    assert len(sysmem.fds) == 2 and len(irqfd.fds) == 2, "fds did not arrive with their message"
    for fd in sysmem.fds + irqfd.fds:
        os.fstat(fd)  # received fds are open and ours to close
        os.close(fd)
    for fd in fds:
        os.close(fd)


def test_clean_close_between_messages_returns_none(pair: tuple[FakeQemu, socket.socket]) -> None:
    qemu, srv = pair
    qemu.sock.close()
    assert recv_message(srv, TIMEOUT) is None, "EOF between messages is the normal end"


def test_idle_peer_times_out_instead_of_hanging(pair: tuple[FakeQemu, socket.socket]) -> None:
    _, srv = pair
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        recv_message(srv, 0.2)
    assert time.monotonic() - start < 1.0, "recv_message overran its timeout"


MALFORMED = [
    ("truncated header", lambda q: (q.sock.sendall(header(CFGREAD, 12)[:10]),
                                    q.sock.shutdown(socket.SHUT_WR)), "truncated header"),
    ("size > 192", lambda q: q.send(CFGREAD, b"", size=193), "exceeds the maximum"),
    ("unknown cmd", lambda q: q.send(8, config_payload(0, 0, 4)), "unknown command 8"),
    ("negative cmd", lambda q: q.send(-1, b""), "unknown command -1"),
    ("RET from QEMU", lambda q: q.send(RET, struct.pack("<Q", 0)), "unexpected RET"),
    ("config payload size", lambda q: q.send(CFGREAD, bar_payload(0, 0, 4, True)),
     "payload size 24, expected 12"),
    ("reset with payload", lambda q: q.send(DEVICE_RESET, b"\0" * 8), "payload size 8, expected 0"),
    ("config len 3", lambda q: q.send(CFGREAD, config_payload(0, 0, 3)), "length 3, not 1, 2 or 4"),
    ("config len 8", lambda q: q.send(CFGWRITE, config_payload(0, 0, 8)), "length 8"),
    ("config beyond 4 KiB", lambda q: q.send(CFGREAD, config_payload(0xFFE, 0, 4)),
     "beyond the 0x1000-byte config space"),
    ("config value too wide", lambda q: q.send(CFGWRITE, config_payload(4, 0x10000, 2)),
     "does not fit in 2 bytes"),
    ("BAR size 3", lambda q: q.send(BAR_READ, bar_payload(0, 0, 3, True)),
     "size 3, not 1, 2, 4 or 8"),
    ("BAR size 16", lambda q: q.send(BAR_WRITE, bar_payload(0, 0, 16, True)), "size 16"),
    ("BAR value too wide", lambda q: q.send(BAR_WRITE, bar_payload(0, 0x100, 1, True)),
     "does not fit in 1 bytes"),
    ("sysmem without fds", lambda q: q.send(SYNC_SYSMEM, sysmem_payload([])), "expected 1..8"),
    ("irqfd with one fd", lambda q: q.send(SET_IRQFD, b"", make_fds(1)), "expected exactly 2"),
    ("fds on a config read", lambda q: q.send(CFGREAD, config_payload(0, 0, 4), make_fds(2)),
     "carries 2 file descriptors, expected none"),
    ("closed mid-payload", lambda q: (q.sock.sendall(header(CFGREAD, 12) + b"\0" * 5),
                                      q.sock.shutdown(socket.SHUT_WR)),
     "peer closed in the middle of a message"),
    ("stalled mid-payload", lambda q: q.sock.sendall(header(BAR_READ, 24) + b"\0" * 5),
     "peer stalled"),
    ("stalled mid-header", lambda q: q.sock.sendall(b"\x03\0\0"), "peer stalled"),
]


@pytest.mark.parametrize("build, message", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_message_raises_clear_protocol_error_and_closes_fds(
        pair: tuple[FakeQemu, socket.socket], build, message: str) -> None:
    qemu, srv = pair
    before = open_fds()
    build(qemu)
    # The fds the fake sent are now in flight; ours (the sender's) are closed so that any
    # fd left open afterwards can only be one the receiver leaked.
    for fd in open_fds() - before:
        with_fd = f"/proc/self/fd/{fd}"
        if os.path.exists(with_fd) and "pipe" in os.readlink(with_fd):
            os.close(fd)
    baseline = open_fds()
    start = time.monotonic()
    with pytest.raises(ProtocolError) as err:
        recv_message(srv, 0.3)
    assert time.monotonic() - start < 2.0, "a malformed message made recv_message hang"
    assert message in str(err.value), f"error {err.value!r} does not say {message!r}"
    leaked = open_fds() - baseline
    assert not leaked, f"fds {sorted(leaked)} left open after {err.value}"


def test_message_reads_exactly_one_message(pair: tuple[FakeQemu, socket.socket]) -> None:
    qemu, srv = pair
    fds = make_fds(2)
    # Sent back to back: a parser reading past its message would eat the next one's bytes
    # or fds.
    qemu.send(CFGREAD, config_payload(0, 0, 4))
    qemu.send(SET_IRQFD, b"", fds)
    qemu.send(CFGREAD, config_payload(4, 0, 2))
    msgs = [recv_message(srv, TIMEOUT) for _ in range(3)]
    assert [m.cmd if m else None for m in msgs] == [Cmd.PCI_CFGREAD, Cmd.SET_IRQFD,
                                                   Cmd.PCI_CFGREAD], f"got {msgs}"
    assert msgs[0] is not None and not msgs[0].fds, "fds of the next message arrived early"
    assert msgs[2] is not None and msgs[2].payload == ConfigAccess(4, 0, 2), str(msgs[2])
    assert msgs[1] is not None
    for fd in msgs[1].fds + tuple(fds):
        os.close(fd)


# -- properties ------------------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_byte_stream_parses_or_fails_cleanly(data: bytes) -> None:
    """Whatever arrives, recv_message returns messages, then None at EOF, or raises
    ProtocolError: never another exception, never a hang."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        a.sendall(data)
        a.close()
        for _ in range(len(data) // 16 + 2):
            try:
                msg = recv_message(b, 0.5)
            except ProtocolError:
                return
            if msg is None:
                return
        pytest.fail("more messages than the bytes could hold")
    finally:
        b.close()


@settings(max_examples=150, deadline=None)
@given(cmd=st.sampled_from([CFGREAD, CFGWRITE]), length=st.sampled_from([1, 2, 4]),
       addr=st.integers(0, 0x1000), data=st.data())
def test_valid_config_messages_round_trip(cmd: int, length: int, addr: int,
                                          data: st.DataObject) -> None:
    addr = min(addr, 0x1000 - length)
    val = data.draw(st.integers(0, (1 << (8 * length)) - 1)) if cmd == CFGWRITE else 0
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        FakeQemu(a).send(cmd, config_payload(addr, val, length))
        msg = recv_message(b, TIMEOUT)
        assert msg is not None and msg.payload == ConfigAccess(addr, val, length), str(msg)
    finally:
        a.close()
        b.close()


@settings(max_examples=150, deadline=None)
@given(cmd=st.sampled_from([BAR_READ, BAR_WRITE]), size=st.sampled_from([1, 2, 4, 8]),
       addr=st.integers(0, (1 << 64) - 9), memory=st.booleans(), data=st.data())
def test_valid_bar_messages_round_trip(cmd: int, size: int, addr: int, memory: bool,
                                       data: st.DataObject) -> None:
    val = data.draw(st.integers(0, (1 << (8 * size)) - 1)) if cmd == BAR_WRITE else 0
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        FakeQemu(a).send(cmd, bar_payload(addr, val, size, memory))
        msg = recv_message(b, TIMEOUT)
        assert msg is not None and msg.payload == BarAccess(addr, val, size, memory), str(msg)
    finally:
        a.close()
        b.close()


def test_a_queued_message_is_taken_even_past_the_deadline(
        pair: tuple[FakeQemu, socket.socket]) -> None:
    """Regression (issue 6 fuzz run on a loaded host): a reader descheduled past its
    deadline rejected a complete, already queued message as a stall."""
    qemu, srv = pair
    qemu.send(BAR_READ, bar_payload(0x1000, 0, 4, True))
    msg = recv_message(srv, 0.0)  # the deadline has passed before the first poll
    assert msg is not None and msg.payload == BarAccess(0x1000, 0, 4, True), f"got {msg}"
