"""The vfio-user transport against a fake QEMU client: every command, every error path.

Ref: QEMU docs/interop/vfio-user.rst; what real QEMU sends: docs/bridge-protocol.md,
"vfio-user".  The device behind the transport is the golden model; RNG values are checked
against glibc itself (models.glibc_oracle).
"""

from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import signal
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qbridge.vfio_user import protocol as p
from qbridge.vfio_user.protocol import DmaError, ProtocolError

from models.contract.regmap import BAR0_SIZE, IDENTITY, RNG_ID_VALUE
from models.glibc_oracle import glibc_sequence
from tests.vfio_user_fake_client import (
    DEVICE_RESET,
    DMA_MAP,
    DMA_READ,
    DMA_UNMAP,
    DMA_WRITE,
    GET_INFO,
    GET_IRQ_INFO,
    GET_REGION_INFO,
    GET_REGION_IO_FDS,
    HDR,
    NO_REPLY,
    REGION_READ,
    REGION_WRITE,
    REPLY,
    SET_IRQS,
    VERSION,
    DmaResponder,
    Harness,
    open_fds,
    pack,
    pending,
    recv_reply,
)

BAR0, CONFIG = 0, 7
BAR_ADDR = 0xFEBF1000


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


@pytest.fixture
def v(h: Harness) -> Harness:
    """A harness past the version handshake."""
    h.version()
    return h


def enable_bar0(h: Harness, addr: int = BAR_ADDR) -> None:
    h.write(CONFIG, 0x10, addr, 4)
    h.write(CONFIG, 0x04, 0x0002, 2)  # COMMAND.MEM


def eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def eventfd_count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def irq_set(flags: int, index: int, start: int, count: int, data: bytes = b"") -> bytes:
    return struct.pack("<IIIII", 20 + len(data), flags, index, start, count) + data


def dma_map(addr: int, size: int, flags: int = 3, offset: int = 0) -> bytes:
    return struct.pack("<IIQQQ", 32, flags, offset, addr, size)


def dma_unmap(addr: int, size: int, flags: int = 0) -> bytes:
    return struct.pack("<IIQQ", 24, flags, addr, size)


def assert_error(reply: object, err: int) -> None:
    assert reply is not None
    assert reply.error, f"expected an error reply, got {reply}"  # type: ignore[attr-defined]
    assert reply.errno == err, errno.errorcode.get(reply.errno)  # type: ignore[attr-defined]
    assert reply.payload == b""  # type: ignore[attr-defined]


# --- VERSION -------------------------------------------------------------------------


def test_version_reply_minor_and_capabilities(h: Harness) -> None:
    reply = h.version(minor=3)
    major, minor = struct.unpack_from("<HH", reply.payload)
    assert (major, minor) == (0, 0)
    assert reply.payload.endswith(b"\0")
    caps = json.loads(reply.payload[4:-1])["capabilities"]
    assert caps == {"max_msg_fds": p.MAX_MSG_FDS, "max_data_xfer_size": p.MAX_DATA_XFER,
                    "max_dma_maps": p.MAX_DMA_MAPS}
    assert h.core.counts["VERSION"] == 1


def test_version_without_capabilities_uses_defaults(h: Harness) -> None:
    reply = h.request(VERSION, struct.pack("<HH", 0, 0))
    assert reply is not None and not reply.error
    assert h.transport.peer_max_data_xfer == p.DEFAULT_PEER_MAX_DATA_XFER


def test_second_version_is_an_error_reply_and_the_session_goes_on(v: Harness) -> None:
    assert_error(v.request(VERSION, struct.pack("<HH", 0, 0)), errno.EINVAL)
    assert v.read_int(CONFIG, 0, 2) == IDENTITY.vendor


@pytest.mark.parametrize("cmd", [GET_INFO, REGION_READ, DMA_MAP, DEVICE_RESET, 99])
def test_anything_before_version_is_a_protocol_error(h: Harness, cmd: int) -> None:
    h.send(cmd, b"\0" * 16)
    with pytest.raises(ProtocolError, match="before VERSION"):
        h.step()
    assert_error(recv_reply(h.client), errno.EINVAL)


@pytest.mark.parametrize("payload, match", [
    (struct.pack("<HH", 1, 0), "major"),
    (struct.pack("<HH", 0, 0) + b"{not json\0", "malformed"),
    (struct.pack("<HH", 0, 0) + b'{"capabilities":{"max_data_xfer_size":"big"}}\0', "malformed"),
    (struct.pack("<HH", 0, 0) + b"[1]\0", "malformed"),
    (b"\0", "malformed"),
    # Regression (bench.robustness.fuzz_vfio_user): nesting beyond the JSON parser's
    # recursion limit escaped as RecursionError, a traceback instead of a refusal.
    (struct.pack("<HH", 0, 0) + b"[" * 3000 + b"\0", "nested too deeply"),
    (struct.pack("<HH", 0, 0) + b'{"a":[' * 650 + b"\0", "nested too deeply"),
])
def test_bad_version_is_refused_and_fatal(h: Harness, payload: bytes, match: str) -> None:
    h.send(VERSION, payload)
    with pytest.raises(ProtocolError, match=match):
        h.step()
    assert recv_reply(h.client).error


# --- information commands -----------------------------------------------------------


def test_device_info(v: Harness) -> None:
    reply = v.request(GET_INFO, struct.pack("<IIII", 16, 0, 0, 0))
    assert reply is not None
    assert struct.unpack("<IIII", reply.payload) == (16, 0b11, 9, 5)  # RESET | PCI


@pytest.mark.parametrize("payload", [struct.pack("<IIII", 8, 0, 0, 0), b"\0" * 12])
def test_device_info_bad_argsz_or_size(v: Harness, payload: bytes) -> None:
    assert_error(v.request(GET_INFO, payload), errno.EINVAL)


@pytest.mark.parametrize("index, flags, size", [
    (0, 3, BAR0_SIZE), (1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0), (5, 0, 0),
    (6, 0, 0), (7, 3, 256), (8, 0, 0),
])
def test_region_info(v: Harness, index: int, flags: int, size: int) -> None:
    reply = v.request(GET_REGION_INFO, struct.pack("<IIIIQQ", 32, 0, index, 0, 0, 0))
    assert reply is not None and not reply.error
    assert struct.unpack("<IIIIQQ", reply.payload) == (32, flags, index, 0, size, 0)


@pytest.mark.parametrize("payload", [
    struct.pack("<IIIIQQ", 32, 0, 9, 0, 0, 0),  # no region 9
    struct.pack("<IIIIQQ", 16, 0, 0, 0, 0, 0),  # argsz smaller than the struct
    struct.pack("<IIII", 32, 0, 0, 0),  # truncated
])
def test_region_info_errors(v: Harness, payload: bytes) -> None:
    assert_error(v.request(GET_REGION_INFO, payload), errno.EINVAL)


@pytest.mark.parametrize("index, flags, count", [
    (0, 0b0111, 1), (1, 0b1001, 1), (2, 0b1001, 0), (3, 0b1001, 0), (4, 0b1001, 0)])
def test_irq_info(v: Harness, index: int, flags: int, count: int) -> None:
    reply = v.request(GET_IRQ_INFO, struct.pack("<IIII", 16, 0, index, 0))
    assert reply is not None
    assert struct.unpack("<IIII", reply.payload) == (16, flags, index, count)


@pytest.mark.parametrize("payload", [struct.pack("<IIII", 16, 0, 5, 0),
                                     struct.pack("<IIII", 4, 0, 0, 0), b"\0" * 20])
def test_irq_info_errors(v: Harness, payload: bytes) -> None:
    assert_error(v.request(GET_IRQ_INFO, payload), errno.EINVAL)


# --- config region --------------------------------------------------------------------


def test_config_identity(v: Harness) -> None:
    assert v.read_int(CONFIG, 0x00, 2) == 0x1234
    assert v.read_int(CONFIG, 0x02, 2) == 0xCAFE
    assert v.read_int(CONFIG, 0x00, 4) == 0xCAFE1234
    assert v.read_int(CONFIG, 0x01, 1) == 0x12
    assert v.read_int(CONFIG, 0x3D, 1) == IDENTITY.interrupt_pin


def test_config_bulk_read_equals_dword_reads(v: Harness) -> None:
    # QEMU reads the whole config region at realize, in one REGION_READ of 256 bytes.
    whole = v.read(CONFIG, 0, 256)
    dwords = b"".join(v.read(CONFIG, off, 4) for off in range(0, 256, 4))
    assert whole == dwords
    assert v.read(CONFIG, 1, 7) == whole[1:8]


def test_bar_sizing_through_config_writes(v: Harness) -> None:
    v.write(CONFIG, 0x10, 0xFFFF_FFFF, 4)
    assert v.read_int(CONFIG, 0x10, 4) == ~(BAR0_SIZE - 1) & 0xFFFF_FFFF
    assert v.transport.bar0_base == 0xFFFFF000
    v.write(CONFIG, 0x14, 0xFFFF_FFFF, 4)  # BAR1 does not exist: reads 0
    assert v.read_int(CONFIG, 0x14, 4) == 0
    v.write(CONFIG, 0x10, BAR_ADDR, 4)
    assert v.transport.bar0_base == BAR_ADDR


def test_bar0_shadow_follows_partial_config_writes(v: Harness) -> None:
    v.write(CONFIG, 0x12, 0xFEBF, 2)  # upper half only
    assert v.transport.bar0_base == 0xFEBF0000
    v.write(CONFIG, 0x0E, 0x1000_0000, 4)  # misaligned: touches 0x10 and 0x11
    assert v.transport.bar0_base == 0xFEBF1000


# --- BAR0 -----------------------------------------------------------------------------


def test_bar0_reads_rng_after_seed(v: Harness) -> None:
    enable_bar0(v)
    assert v.read_int(BAR0, 0x8, 4) == RNG_ID_VALUE
    v.write(BAR0, 0x4, 1234, 4, posted=True)  # SEED, posted as QEMU does
    assert not pending(v.client), "a posted write got a reply"
    want = glibc_sequence(1234, 7)
    got = [v.read_int(BAR0, 0x0, 4) for _ in range(5)]
    got64 = v.read_int(BAR0, 0x10, 8)  # RNG64: two numbers, lower first
    assert got + [got64 & 0xFFFF_FFFF, got64 >> 32] == want


def test_bar0_small_reads(v: Harness) -> None:
    enable_bar0(v)
    assert v.read_int(BAR0, 0x8, 1) == RNG_ID_VALUE & 0xFF
    assert v.read_int(BAR0, 0xA, 2) == RNG_ID_VALUE >> 16
    assert v.read_int(BAR0, 0x8, 8) == RNG_ID_VALUE | v.read_int(BAR0, 0xC, 4) << 32


def test_bar0_without_memory_enable_reads_all_ones(v: Harness) -> None:
    v.write(CONFIG, 0x10, BAR_ADDR, 4)
    assert v.read_int(BAR0, 0x8, 4) == 0xFFFF_FFFF


def test_bar0_reprogrammed_follows_the_shadow(v: Harness) -> None:
    enable_bar0(v, 0xE0000000)
    assert v.read_int(BAR0, 0x8, 4) == RNG_ID_VALUE
    v.write(CONFIG, 0x10, 0xC0001000, 4)
    assert v.read_int(BAR0, 0x8, 4) == RNG_ID_VALUE


def test_non_posted_bar_write_gets_a_reply(v: Harness) -> None:
    enable_bar0(v)
    v.write(BAR0, 0x4, 5, 4)
    assert v.read_int(BAR0, 0, 4) == glibc_sequence(5, 1)[0]


@pytest.mark.parametrize("region, offset, count", [
    (BAR0, 0, 3), (BAR0, 0, 16), (BAR0, BAR0_SIZE - 2, 4), (BAR0, 0, 0),
    (CONFIG, 0, 0), (CONFIG, 0xFE, 4), (CONFIG, 0x100, 1), (1, 0, 4), (6, 0, 4), (9, 0, 4),
    (BAR0, 1 << 63, 4),
])
def test_bad_region_accesses_are_error_replies(v: Harness, region: int, offset: int,
                                               count: int) -> None:
    acc = struct.pack("<QII", offset, region, count)
    assert_error(v.request(REGION_READ, acc), errno.EINVAL)
    assert_error(v.request(REGION_WRITE, acc + b"\0" * count), errno.EINVAL)
    assert v.read_int(CONFIG, 0, 2) == 0x1234  # still serving


def test_region_write_data_length_mismatch(v: Harness) -> None:
    assert_error(v.request(REGION_WRITE, struct.pack("<QII", 0, CONFIG, 4) + b"\0\0"),
                 errno.EINVAL)
    assert_error(v.request(REGION_READ, struct.pack("<QII", 0, CONFIG, 4) + b"\0"),
                 errno.EINVAL)


def test_bad_posted_write_gets_no_reply_but_a_log_line(v: Harness,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "cosim.bridge.vfio_user"):
        v.request(REGION_WRITE, struct.pack("<QII", 0, BAR0, 3) + b"abc", flags=NO_REPLY)
    assert not pending(v.client)
    lines = [r for r in caplog.records if r.name == "cosim.bridge.vfio_user"]
    assert len(lines) == 1 and "posted" in lines[0].getMessage()


# --- DEVICE_RESET ---------------------------------------------------------------------


def test_device_reset(v: Harness) -> None:
    enable_bar0(v)
    v.write(BAR0, 0x4, 99, 4, posted=True)
    reply = v.request(DEVICE_RESET)
    assert reply is not None and not reply.error and reply.payload == b""
    assert v.core.resets == 1
    assert v.transport.bar0_base == 0  # the model's BAR0 is 0 after reset, and so is ours
    enable_bar0(v)
    assert v.read_int(BAR0, 0, 4) == glibc_sequence(1, 1)[0]  # as after srand(1)
    assert_error(v.request(DEVICE_RESET, b"x"), errno.EINVAL)


# --- SET_IRQS and trigger -------------------------------------------------------------

TRIG_EFD = p.IRQ_SET_DATA_EVENTFD | p.IRQ_SET_ACTION_TRIGGER  # 0x24, what QEMU sends
DISABLE = p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_TRIGGER  # 0x21 with count 0


def test_intx_trigger_automask_unmask(v: Harness) -> None:
    efd = eventfd()
    try:
        before = open_fds()
        assert not v.request(SET_IRQS, irq_set(TRIG_EFD, 0, 0, 1), fds=[efd]).error
        assert open_fds() == before + 1  # the transport keeps its copy
        assert v.transport.trigger(0) is True
        assert eventfd_count(efd) == 1
        # AUTOMASKED: masked after firing; a trigger now is pending, not signalled.
        assert v.transport.trigger(0) is False
        assert eventfd_count(efd) == 0
        unmask = p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_UNMASK
        assert not v.request(SET_IRQS, irq_set(unmask, 0, 0, 1)).error
        assert eventfd_count(efd) == 1  # the pending one fired on unmask
        # Disable: the transport's copy is closed.
        assert not v.request(SET_IRQS, irq_set(DISABLE, 0, 0, 0)).error
        assert open_fds() == before
        assert v.transport.trigger(0) is False
    finally:
        os.close(efd)


def test_mask_then_trigger_is_pending(v: Harness) -> None:
    efd = eventfd()
    try:
        v.request(SET_IRQS, irq_set(TRIG_EFD, 0, 0, 1), fds=[efd])
        mask = p.IRQ_SET_DATA_BOOL | p.IRQ_SET_ACTION_MASK
        assert not v.request(SET_IRQS, irq_set(mask, 0, 0, 1, b"\1")).error
        assert v.transport.trigger(0) is False and eventfd_count(efd) == 0
        unmask = p.IRQ_SET_DATA_BOOL | p.IRQ_SET_ACTION_UNMASK
        assert not v.request(SET_IRQS, irq_set(unmask, 0, 0, 1, b"\0")).error  # bool false
        assert eventfd_count(efd) == 0
        assert not v.request(SET_IRQS, irq_set(unmask, 0, 0, 1, b"\1")).error
        assert eventfd_count(efd) == 1
    finally:
        os.close(efd)


def test_msi_replace_and_unset(v: Harness) -> None:
    a, b = eventfd(), eventfd()
    try:
        before = open_fds()
        v.request(SET_IRQS, irq_set(TRIG_EFD, 1, 0, 1), fds=[a])
        v.request(SET_IRQS, irq_set(TRIG_EFD, 1, 0, 1), fds=[b])  # replaces: a's copy closed
        assert open_fds() == before + 1
        assert v.transport.trigger(1) and v.transport.trigger(1)  # MSI is not automasked
        assert (eventfd_count(a), eventfd_count(b)) == (0, 2)
        # Client-side trigger (DATA_NONE | TRIGGER) signals the eventfd too.
        assert not v.request(SET_IRQS, irq_set(DISABLE, 1, 0, 1)).error
        assert eventfd_count(b) == 1
        # DATA_EVENTFD without fds: unset the vectors (QEMU's form of -1 entries).
        assert not v.request(SET_IRQS, irq_set(TRIG_EFD, 1, 0, 1)).error
        assert open_fds() == before
        assert v.transport.trigger(1) is False
    finally:
        os.close(a)
        os.close(b)


def test_trigger_of_a_missing_vector_raises(v: Harness) -> None:
    with pytest.raises(ValueError):
        v.transport.trigger(2)
    with pytest.raises(ValueError):
        v.transport.trigger(0, 1)


@pytest.mark.parametrize("payload, nfds", [
    (irq_set(TRIG_EFD, 5, 0, 1), 1),  # no such index
    (irq_set(TRIG_EFD, 0, 0, 2), 2),  # INTx has one vector
    (irq_set(TRIG_EFD, 2, 0, 1), 1),  # MSI-X has none
    (irq_set(TRIG_EFD | p.IRQ_SET_DATA_BOOL, 0, 0, 1), 1),  # two data types
    (irq_set(p.IRQ_SET_DATA_EVENTFD | 0x18, 0, 0, 1), 1),  # two actions
    (irq_set(DISABLE, 0, 0, 1), 1),  # fds without DATA_EVENTFD
    (irq_set(p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_MASK, 1, 0, 1), 0),  # MSI not maskable
    (irq_set(p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_MASK, 0, 0, 0), 0),  # count 0, not trigger
    (irq_set(p.IRQ_SET_DATA_BOOL | p.IRQ_SET_ACTION_TRIGGER, 0, 0, 1), 0),  # bools missing
    (struct.pack("<IIIII", 24, TRIG_EFD, 0, 0, 1), 1),  # argsz beyond the payload
    (struct.pack("<IIII", 16, TRIG_EFD, 0, 0), 0),  # truncated
    (irq_set(TRIG_EFD | 0x100, 0, 0, 1), 1),  # unknown flag bit
])
def test_set_irqs_errors_close_the_fds(v: Harness, payload: bytes, nfds: int) -> None:
    fds = [eventfd() for _ in range(nfds)]
    try:
        before = open_fds()
        assert_error(v.request(SET_IRQS, payload, fds=fds), errno.EINVAL)
        assert open_fds() == before
    finally:
        for fd in fds:
            os.close(fd)


def test_set_irqs_refuses_fds_that_are_not_eventfds(v: Harness) -> None:
    """Regression (bench.robustness.fuzz_vfio_user): a memfd or a read-only fd armed as a
    trigger "eventfd" was accepted; the next trigger wrote into the memfd, or raised EBADF
    out of the server."""
    ram = os.memfd_create("not-an-eventfd", os.MFD_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for fd in (ram, null):
            before = open_fds()
            assert_error(v.request(SET_IRQS, irq_set(TRIG_EFD, 1, 0, 1), fds=[fd]),
                         errno.EINVAL)
            assert open_fds() == before
            assert not v.request(SET_IRQS, irq_set(DISABLE, 1, 0, 1)).error  # a trigger
            assert v.transport.trigger(1) is False  # nothing armed
        assert os.fstat(ram).st_size == 0
    finally:
        os.close(ram)
        os.close(null)


@pytest.mark.parametrize("blocking", [True, False])
def test_trigger_of_a_saturated_eventfd_neither_blocks_nor_raises(v: Harness,
                                                                  blocking: bool) -> None:
    """Regression (bench.robustness.fuzz_vfio_user): a client that never reads its eventfd
    can fill the counter; the next trigger blocked the server for good (blocking eventfd)
    or raised EAGAIN out of it (non-blocking)."""
    efd = os.eventfd(0, os.EFD_CLOEXEC | (0 if blocking else os.EFD_NONBLOCK))
    os.eventfd_write(efd, 2**64 - 2)  # the largest counter value
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the trigger blocked"))
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        assert not v.request(SET_IRQS, irq_set(TRIG_EFD, 1, 0, 1), fds=[efd]).error
        assert not v.request(SET_IRQS, irq_set(DISABLE, 1, 0, 1)).error  # client trigger
        assert v.transport.trigger(1) is True  # the device's: still signalled
        assert os.eventfd_read(efd) == 2**64 - 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(efd)


def test_set_irqs_fd_count_mismatch(v: Harness) -> None:
    fds = [eventfd(), eventfd()]
    try:
        before = open_fds()
        assert_error(v.request(SET_IRQS, irq_set(TRIG_EFD, 0, 0, 1), fds=fds), errno.EINVAL)
        assert open_fds() == before
    finally:
        for fd in fds:
            os.close(fd)


# --- DMA ------------------------------------------------------------------------------


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, 0x40000)
    os.pwrite(fd, bytes(range(256)) * 4, 0x21000)
    yield fd
    os.close(fd)


def test_dma_map_memfd_read_write(v: Harness, memfd: int) -> None:
    before = open_fds()
    # The window at DMA address 0x100000 is the memfd from offset 0x20000.
    assert not v.request(DMA_MAP, dma_map(0x100000, 0x10000, 3, 0x20000), fds=[memfd]).error
    # Our copy of the fd is closed once mapped; CPython's mmap object keeps a dup of its
    # own until the mapping is closed.
    assert open_fds() == before + 1
    assert v.transport.dma_read(0x101000, 8) == bytes(range(8))
    v.transport.dma_write(0x101004, b"\xaa\xbb")
    assert os.pread(memfd, 8, 0x21000) == b"\0\1\2\3\xaa\xbb\6\7"
    with pytest.raises(DmaError, match="no DMA_MAP"):
        v.transport.dma_read(0x110000, 1)  # just past the window
    with pytest.raises(DmaError, match="no DMA_MAP"):
        v.transport.dma_read(0x10FFFF, 2)  # crossing its end
    reply = v.request(DMA_UNMAP, dma_unmap(0x100000, 0x10000))
    assert reply is not None and reply.payload == dma_unmap(0x100000, 0x10000)
    with pytest.raises(DmaError):
        v.transport.dma_read(0x101000, 1)
    assert open_fds() == before


def test_dma_map_beyond_max_dma_maps_is_refused(v: Harness) -> None:
    for i in range(p.MAX_DMA_MAPS):
        assert not v.request(DMA_MAP, dma_map(i << 12, 0x1000)).error
    reply = v.request(DMA_MAP, dma_map(p.MAX_DMA_MAPS << 12, 0x1000))
    assert reply is not None and reply.error and reply.errno == errno.ENOSPC
    # Unmapping one makes room again.
    assert not v.request(DMA_UNMAP, dma_unmap(0, 0x1000)).error
    assert not v.request(DMA_MAP, dma_map(p.MAX_DMA_MAPS << 12, 0x1000)).error


def test_dma_map_unaligned_offset(v: Harness, memfd: int) -> None:
    assert not v.request(DMA_MAP, dma_map(0x5000, 0x100, 3, 0x21010), fds=[memfd]).error
    assert v.transport.dma_read(0x5000, 4) == bytes(range(16, 20))


def test_dma_read_only_window(v: Harness, memfd: int) -> None:
    v.request(DMA_MAP, dma_map(0x0, 0x1000, p.DMA_MAP_FLAG_READ, 0x21000), fds=[memfd])
    assert v.transport.dma_read(0, 2) == b"\0\1"
    with pytest.raises(DmaError, match="not writable"):
        v.transport.dma_write(0, b"x")


@pytest.mark.parametrize("payload, err", [
    (dma_map(0x1800, 0x1000), errno.EEXIST),  # overlaps 0x1000+0x1000
    (dma_map(0x0, 0x1001), errno.EEXIST),
    (dma_map(0x9000, 0), errno.EINVAL),
    (dma_map(0xFFFF_FFFF_FFFF_F000, 0x2000), errno.EINVAL),
    (dma_map(0x9000, 0x1000, flags=8), errno.EINVAL),
    (struct.pack("<IIQQQ", 24, 3, 0, 0x9000, 0x1000), errno.EINVAL),  # argsz
    (b"\0" * 24, errno.EINVAL),
])
def test_dma_map_errors(v: Harness, payload: bytes, err: int) -> None:
    assert not v.request(DMA_MAP, dma_map(0x1000, 0x1000)).error
    assert_error(v.request(DMA_MAP, payload), err)
    assert len(v.transport.dma) == 1


def test_dma_map_fd_that_cannot_be_mapped(v: Harness) -> None:
    efd = eventfd()
    try:
        before = open_fds()
        assert_error(v.request(DMA_MAP, dma_map(0, 0x1000), fds=[efd]), errno.EINVAL)
        assert open_fds() == before and not v.transport.dma
    finally:
        os.close(efd)


def test_dma_map_two_fds(v: Harness, memfd: int) -> None:
    before = open_fds()
    assert_error(v.request(DMA_MAP, dma_map(0, 0x1000), fds=[memfd, memfd]), errno.EINVAL)
    assert open_fds() == before


@pytest.mark.parametrize("payload, err", [
    (dma_unmap(0x1000, 0x800), errno.EINVAL),  # not the exact window
    (dma_unmap(0x5000, 0x1000), errno.EINVAL),  # unknown
    (dma_unmap(0x1000, 0x1000, flags=p.DMA_UNMAP_FLAG_GET_DIRTY_BITMAP), errno.ENOTSUP),
    (dma_unmap(0x1000, 0x1000, flags=4), errno.EINVAL),
    (dma_unmap(0x1000, 0x1000, flags=p.DMA_UNMAP_FLAG_ALL), errno.EINVAL),  # all + range
    (struct.pack("<IIQQ", 16, 0, 0x1000, 0x1000), errno.EINVAL),  # argsz
    (b"\0" * 32, errno.EINVAL),
])
def test_dma_unmap_errors(v: Harness, payload: bytes, err: int) -> None:
    v.request(DMA_MAP, dma_map(0x1000, 0x1000))
    assert_error(v.request(DMA_UNMAP, payload), err)
    assert len(v.transport.dma) == 1


def test_dma_unmap_all(v: Harness, memfd: int) -> None:
    v.request(DMA_MAP, dma_map(0x0, 0x1000), fds=[memfd])
    v.request(DMA_MAP, dma_map(0x8000, 0x1000))
    reply = v.request(DMA_UNMAP, dma_unmap(0, 0, flags=p.DMA_UNMAP_FLAG_ALL))
    assert reply is not None and not reply.error and not v.transport.dma


def test_dma_by_messages(v: Harness) -> None:
    v.request(DMA_MAP, dma_map(0x80000, 0x4000))  # no fd: DMA_READ / DMA_WRITE messages
    memory = {0x80000 + i: (i * 7) & 0xFF for i in range(0x3000)}
    responder = DmaResponder(v.client, memory)
    responder.start()
    try:
        data = v.transport.dma_read(0x80010, 0x2000)  # more than MAX_DATA_XFER: split
        assert data == bytes((i * 7) & 0xFF for i in range(0x10, 0x2010))
        v.transport.dma_write(0x81000, b"hello")
    finally:
        responder.stop()
    assert bytes(memory[0x81000 + i] for i in range(5)) == b"hello"
    reads = [r for r in responder.requests if r[0] == DMA_READ]
    assert [r[2] for r in reads] == [p.MAX_DATA_XFER, p.MAX_DATA_XFER]
    assert responder.requests[-1] == (DMA_WRITE, 0x81000, 5)


def test_dma_respects_the_peer_transfer_size(h: Harness) -> None:
    caps = b'{"capabilities":{"max_data_xfer_size":512}}\0'
    assert not h.request(VERSION, struct.pack("<HH", 0, 0) + caps).error
    h.request(DMA_MAP, dma_map(0, 0x1000))
    responder = DmaResponder(h.client, {})
    responder.start()
    try:
        assert h.transport.dma_read(0, 1200) == bytes(1200)
    finally:
        responder.stop()
    assert [r[2] for r in responder.requests] == [512, 512, 176]


def test_dma_error_reply_raises(v: Harness) -> None:
    v.request(DMA_MAP, dma_map(0, 0x1000))
    responder = DmaResponder(v.client, {}, errors=True)
    responder.start()
    try:
        with pytest.raises(DmaError, match="EFAULT"):
            v.transport.dma_read(0, 4)
        with pytest.raises(DmaError, match="EFAULT"):
            v.transport.dma_write(0, b"x")
    finally:
        responder.stop()


def test_dma_without_reply_times_out(v: Harness) -> None:
    v.request(DMA_MAP, dma_map(0, 0x1000))
    v.transport.message_timeout = 0.2
    with pytest.raises(ProtocolError, match="no reply"):
        v.transport.dma_read(0, 4)


def test_command_during_dma_wait_is_handled_afterwards(v: Harness) -> None:
    v.request(DMA_MAP, dma_map(0, 0x1000))
    # The client sends a config read before it answers our DMA_READ.
    cmd = pack(REGION_READ, struct.pack("<QII", 0, CONFIG, 2), msg_id=500)
    responder = DmaResponder(v.client, {0: 0x5A}, before_reply=cmd)
    responder.start()
    try:
        assert v.transport.dma_read(0, 1) == b"\x5a"
    finally:
        responder.stop()
    assert len(v.transport._queued) == 1
    v.send(GET_INFO, struct.pack("<IIII", 16, 0, 0, 0), msg_id=501)
    v.step()  # handles the new message, then the queued one
    replies = {r.msg_id: r for r in (recv_reply(v.client), recv_reply(v.client))}
    assert replies[500].payload[16:] == b"\x34\x12"
    assert not replies[501].error


# --- fds on every message kind, fd limits, framing ------------------------------------

_VALID = {
    GET_INFO: struct.pack("<IIII", 16, 0, 0, 0),
    GET_REGION_INFO: struct.pack("<IIIIQQ", 32, 0, 0, 0, 0, 0),
    GET_IRQ_INFO: struct.pack("<IIII", 16, 0, 0, 0),
    REGION_READ: struct.pack("<QII", 0, CONFIG, 4),
    REGION_WRITE: struct.pack("<QII", 0x3C, CONFIG, 1) + b"\x0b",
    DMA_UNMAP: dma_unmap(0, 0, flags=p.DMA_UNMAP_FLAG_ALL),
    DEVICE_RESET: b"",
    VERSION: struct.pack("<HH", 0, 0),
    GET_REGION_IO_FDS: struct.pack("<IIII", 16, 0, 0, 0),
    DMA_READ: struct.pack("<QQ", 0, 4),
    DMA_WRITE: struct.pack("<QQ", 0, 1) + b"x",
    14: b"",
    15: b"\0" * 8,
    16: b"\0" * 8,
    17: b"\0" * 8,
    18: b"\0" * 8,
    200: b"",
}


@pytest.mark.parametrize("cmd", sorted(_VALID))
def test_fds_on_a_message_that_takes_none(v: Harness, cmd: int) -> None:
    efd = eventfd()
    try:
        before = open_fds()
        reply = v.request(cmd, _VALID[cmd], fds=[efd])
        assert reply is not None and reply.error
        assert reply.errno in (errno.EINVAL, errno.ENOTSUP)
        assert open_fds() == before
    finally:
        os.close(efd)


@pytest.mark.parametrize("cmd", [DMA_MAP, SET_IRQS])
def test_more_fds_than_max_msg_fds(v: Harness, cmd: int) -> None:
    fds = [eventfd() for _ in range(p.MAX_MSG_FDS + 1)]
    try:
        before = open_fds()
        payload = dma_map(0, 0x1000) if cmd == DMA_MAP else irq_set(TRIG_EFD, 1, 0, 9)
        assert_error(v.request(cmd, payload, fds=fds), errno.EINVAL)
        assert open_fds() == before
    finally:
        for fd in fds:
            os.close(fd)


def test_far_more_fds_than_any_buffer(v: Harness) -> None:
    fds = [eventfd() for _ in range(p.MAX_MSG_FDS * 4 + 8)]  # truncated by the kernel
    try:
        before = open_fds()
        assert_error(v.request(DMA_MAP, dma_map(0, 0x1000), fds=fds), errno.EINVAL)
        assert open_fds() == before
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("cmd", [GET_REGION_IO_FDS, 14, 15, 16, 17, 18, DMA_READ, 0, 999])
def test_unsupported_and_unknown_commands(v: Harness, cmd: int) -> None:
    assert_error(v.request(cmd, _VALID.get(cmd, b"")), errno.ENOTSUP)
    assert v.core.counts[p.CMD_NAMES.get(cmd, "unknown")] == 1


def test_unsolicited_reply_is_fatal(v: Harness) -> None:
    v.send(DMA_READ, struct.pack("<QQ", 0, 0), flags=REPLY)
    with pytest.raises(ProtocolError, match="unexpected"):
        v.step()


def test_unknown_message_type(v: Harness) -> None:
    assert_error(v.request(GET_INFO, _VALID[GET_INFO], flags=2), errno.EINVAL)


def test_header_smaller_than_itself(v: Harness) -> None:
    v.send(GET_INFO, raw=HDR.pack(1, GET_INFO, 8, 0, 0))
    with pytest.raises(ProtocolError, match="smaller"):
        v.step()


def test_oversized_message_is_refused_before_its_payload(v: Harness) -> None:
    v.send(REGION_WRITE, raw=HDR.pack(3, REGION_WRITE, p.MAX_MSG_SIZE + 1, 0, 0))
    with pytest.raises(ProtocolError, match="exceeds"):
        v.step()
    assert_error(recv_reply(v.client), errno.E2BIG)


def test_truncated_header_then_close(v: Harness) -> None:
    v.client.sendall(b"\1\0\4\0")
    v.client.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="truncated header"):
        v.step()


def test_peer_closes_mid_payload(v: Harness) -> None:
    v.client.sendall(HDR.pack(1, GET_INFO, 32, 0, 0) + b"\0" * 4)
    v.client.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="middle of a message"):
        v.step()


def test_peer_stalls_mid_payload(v: Harness) -> None:
    v.core.message_timeout = 0.2
    v.client.sendall(HDR.pack(1, GET_INFO, 32, 0, 0) + b"\0" * 4)
    with pytest.raises(ProtocolError, match="stalled"):
        v.step()


def test_clean_close_between_messages(v: Harness) -> None:
    v.client.shutdown(socket.SHUT_WR)
    assert v.step() is False


def test_counts_by_command(v: Harness) -> None:
    v.read(CONFIG, 0, 4)
    v.read(CONFIG, 0, 2)
    v.write(CONFIG, 0x3C, 5, 1)
    assert v.core.counts == {"VERSION": 1, "REGION_READ": 2, "REGION_WRITE": 1}


def test_close_releases_eventfds_and_mappings(v: Harness, memfd: int) -> None:
    efd = eventfd()
    try:
        before = open_fds()
        v.request(SET_IRQS, irq_set(TRIG_EFD, 0, 0, 1), fds=[efd])
        v.request(DMA_MAP, dma_map(0, 0x1000), fds=[memfd])
        assert open_fds() == before + 2  # the eventfd, and the mapping's own dup
        mapping = v.transport.dma[0].mapping
        v.transport.close()
        assert open_fds() == before and mapping is not None and mapping.closed
        assert not v.transport.dma
        v.transport.close()  # idempotent
    finally:
        os.close(efd)


# --- fuzz -----------------------------------------------------------------------------

_CMDS = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 0, 77])


@st.composite
def _messages(draw: st.DrawFn) -> tuple[bytes, int]:
    cmd = draw(_CMDS)
    kind = draw(st.sampled_from(["valid", "random", "header"]))
    if kind == "valid" and cmd in _VALID:
        payload = bytearray(_VALID[cmd])
        for _ in range(draw(st.integers(0, 3))):  # flip a few bytes
            if payload:
                payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
    else:
        payload = bytearray(draw(st.binary(max_size=64)))
    flags = draw(st.sampled_from([0, 0, 0, NO_REPLY, REPLY, 2, 0x20]))
    size = HDR.size + len(payload)
    if kind == "header":
        size = draw(st.sampled_from([0, 8, 15, size, size + 1, p.MAX_MSG_SIZE + 1]))
    nfds = draw(st.sampled_from([0, 0, 0, 1, 2, p.MAX_MSG_FDS + 1]))
    return HDR.pack(draw(st.integers(0, 0xFFFF)), cmd, size, flags, 0) + bytes(payload), nfds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(_messages(), min_size=1, max_size=6))
def test_fuzz_no_escape_no_leak(versioned: bool, msgs: list[tuple[bytes, int]]) -> None:
    before = open_fds()
    h = Harness()
    h.core.message_timeout = 0.05
    try:
        if versioned:
            h.version()
        for raw, nfds in msgs:
            fds = [eventfd() for _ in range(nfds)]
            try:
                h.client.sendmsg([raw], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          bytes(struct.pack(f"{nfds}i", *fds)))] if fds else [])
            finally:
                for fd in fds:
                    os.close(fd)
            try:
                alive = h.step()
            except ProtocolError:
                break
            if not alive:
                break
            while pending(h.client):  # replies: drain them, each must be well formed
                reply = recv_reply(h.client, 1.0)
                assert reply.flags & 0xF == REPLY
            for i in range(len(h.transport.irqs)):  # eventfds from random SET_IRQS
                irq = h.transport.irqs[i]
                for vector in range(irq.count):
                    h.transport.trigger(i, vector)
    finally:
        h.close()
    assert open_fds() == before


def test_mmap_granularity_is_a_page() -> None:
    # DMA_MAP aligns mmap offsets to this; QEMU's offsets are page aligned (pgsizes 4096).
    assert mmap.ALLOCATIONGRANULARITY == 4096
