"""The vfio-user wire format, written from the specification.

Ref: QEMU docs/interop/vfio-user.rst (the protocol; section names are cited below),
libvfio-user include/vfio-user.h (the message structs) and Linux
include/uapi/linux/vfio.h (the VFIO structs and flags the protocol reuses).  Decisions and
what QEMU sends when: docs/bridge-protocol.md, "vfio-user".

A message is a 16-byte header (u16 msg_id, u16 cmd, u32 msg_size including the header,
u32 flags, u32 errno) followed by `msg_size - 16` payload bytes, all little endian (the
host's order; vfio-user.rst, "Protocol Specification").  File descriptors ride on the same
sendmsg as SCM_RIGHTS, so they arrive with the header's first byte.

This module is the codec only: constants, structs, receiving exactly one whole message
(fds included) within a deadline, sending replies and error replies, and the
server-to-client DMA_READ / DMA_WRITE requests with their bounded wait for the reply.
What the commands mean for the device is `qbridge.vfio_user.transport`.
"""

from __future__ import annotations

import array
import errno as errno_codes
import json
import logging
import select
import socket
import struct
import time
from collections.abc import Callable
from enum import IntEnum
from typing import NamedTuple

from qbridge.core import ProtocolError
from qbridge.guest_host import GuestMemoryError
from qbridge.sockio import close_fds, wait_ready

__all__ = [
    "CMD_NAMES",
    "DEFAULT_PEER_MAX_DATA_XFER",
    "DEVICE_INFO",
    "DMA_ACCESS",
    "DMA_MAP",
    "DMA_UNMAP",
    "HEADER",
    "IRQ_INFO",
    "IRQ_SET",
    "MAX_DATA_XFER",
    "MAX_MSG_FDS",
    "MAX_MSG_SIZE",
    "REGION_ACCESS",
    "REGION_INFO",
    "VERSION",
    "Cmd",
    "DmaError",
    "Message",
    "MessageIds",
    "OversizedMessage",
    "ProtocolError",
    "close_fds",
    "dma_read_message",
    "dma_write_message",
    "pack_error",
    "pack_message",
    "pack_reply",
    "parse_version",
    "recv_message",
    "send_bytes",
    "send_error",
    "send_reply",
    "version_reply_payload",
]

log = logging.getLogger("cosim.bridge.vfio_user")


class Cmd(IntEnum):
    """Command numbers (vfio-user.rst, "Commands"); the numbering is the ABI."""

    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


# Plain ints and a name table: `Enum.name` and enum comparisons are slow, and the command of
# every message is looked up (proxy transport: the same lesson, bench/README.md).
CMD_NAMES: dict[int, str] = {int(c): c.name for c in Cmd}

# Header (vfio-user.rst, "Header").
HEADER = struct.Struct("<HHIII")  # msg_id, cmd, msg_size, flags, errno
FLAG_TYPE_MASK = 0xF
TYPE_COMMAND = 0
TYPE_REPLY = 1
FLAG_NO_REPLY = 1 << 4
FLAG_ERROR = 1 << 5

# Payload structs, little endian, packed (vfio-user.h).
VERSION = struct.Struct("<HH")  # major, minor; then optional NUL-terminated JSON
DMA_MAP = struct.Struct("<IIQQQ")  # argsz, flags, offset, addr, size (vfio_user_dma_map)
DMA_UNMAP = struct.Struct("<IIQQ")  # argsz, flags, addr, size (vfio_user_dma_unmap)
DEVICE_INFO = struct.Struct("<IIII")  # argsz, flags, num_regions, num_irqs
REGION_INFO = struct.Struct("<IIIIQQ")  # argsz, flags, index, cap_offset, size, offset
IRQ_INFO = struct.Struct("<IIII")  # argsz, flags, index, count
IRQ_SET = struct.Struct("<IIIII")  # argsz, flags, index, start, count; then data
REGION_ACCESS = struct.Struct("<QII")  # offset, region, count; then data
DMA_ACCESS = struct.Struct("<QQ")  # addr, count; then data (vfio_user_dma_region_access)

assert HEADER.size == 16 and DMA_MAP.size == 32 and DMA_UNMAP.size == 24
assert REGION_INFO.size == 32 and IRQ_SET.size == 20 and REGION_ACCESS.size == 16

# VFIO flags and indexes the protocol reuses (linux/vfio.h).
DEVICE_FLAGS_RESET = 1 << 0  # VFIO_DEVICE_FLAGS_RESET
DEVICE_FLAGS_PCI = 1 << 1  # VFIO_DEVICE_FLAGS_PCI
REGION_INFO_FLAG_READ = 1 << 0
REGION_INFO_FLAG_WRITE = 1 << 1
REGION_INFO_FLAG_MMAP = 1 << 2
REGION_INFO_FLAG_CAPS = 1 << 3
IRQ_INFO_EVENTFD = 1 << 0
IRQ_INFO_MASKABLE = 1 << 1
IRQ_INFO_AUTOMASKED = 1 << 2
IRQ_INFO_NORESIZE = 1 << 3
IRQ_SET_DATA_NONE = 1 << 0
IRQ_SET_DATA_BOOL = 1 << 1
IRQ_SET_DATA_EVENTFD = 1 << 2
IRQ_SET_ACTION_MASK = 1 << 3
IRQ_SET_ACTION_UNMASK = 1 << 4
IRQ_SET_ACTION_TRIGGER = 1 << 5
IRQ_SET_DATA_TYPE_MASK = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD
IRQ_SET_ACTION_TYPE_MASK = IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER
DMA_MAP_FLAG_READ = 1 << 0  # VFIO_DMA_MAP_FLAG_READ / VFIO_USER_F_DMA_REGION_READ
DMA_MAP_FLAG_WRITE = 1 << 1
DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
DMA_UNMAP_FLAG_ALL = 1 << 1  # QEMU's vfio-user container sends it to drop every map
# vfio-pci region and IRQ indexes (enum VFIO_PCI_*_REGION_INDEX / *_IRQ_INDEX).
PCI_BAR0_REGION_INDEX = 0
PCI_ROM_REGION_INDEX = 6
PCI_CONFIG_REGION_INDEX = 7
PCI_VGA_REGION_INDEX = 8
PCI_NUM_REGIONS = 9
PCI_INTX_IRQ_INDEX = 0
PCI_MSI_IRQ_INDEX = 1
PCI_MSIX_IRQ_INDEX = 2
PCI_ERR_IRQ_INDEX = 3
PCI_REQ_IRQ_INDEX = 4
PCI_NUM_IRQS = 5

# The limits we enforce, and so announce in our VERSION reply (vfio-user.rst, "Version").
# max_msg_fds: more than any message of ours needs (one per DMA_MAP, one per IRQ vector).
# max_data_xfer_size: the largest region (BAR0, 4 KiB); the config region (256 bytes) and
# the 8-byte BAR accesses fit.  A message is at most a REGION_WRITE or DMA_READ reply of
# that many data bytes; anything larger is refused before its payload is read.
# max_dma_maps: QEMU keeps about 30 windows for our guest (a few per memory-map change, most
# unmapped again); a bound keeps a hostile client from growing the table (and its
# overlap scan) without end.
MAX_MSG_FDS = 8
MAX_DATA_XFER = 4096
MAX_DMA_MAPS = 1024
MAX_MSG_SIZE = HEADER.size + REGION_ACCESS.size + MAX_DATA_XFER
# What a peer that does not say otherwise accepts (vfio-user.rst, "Version").
DEFAULT_PEER_MAX_DATA_XFER = 1 << 20


class Message(NamedTuple):
    """One received message.  `fds` are owned by the receiver, who must close them.

    A NamedTuple, not a dataclass: one is built per guest access, and this is the cheapest
    immutable record (the proxy transport measured it)."""

    msg_id: int
    cmd: int
    flags: int
    errno: int
    payload: bytes
    fds: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return CMD_NAMES.get(self.cmd, f"command {self.cmd}")

    def __str__(self) -> str:
        kind = "reply" if self.flags & FLAG_TYPE_MASK == TYPE_REPLY else "command"
        extra = " no-reply" if self.flags & FLAG_NO_REPLY else ""
        if self.flags & FLAG_ERROR:
            extra += f" error={self.errno}"
        fds = f" fds={list(self.fds)}" if self.fds else ""
        return (f"{self.name} {kind} id={self.msg_id} size={HEADER.size + len(self.payload)}"
                f"{extra}{fds} payload={self.payload[:48].hex()}")


class OversizedMessage(ProtocolError):
    """A header announcing more than MAX_MSG_SIZE bytes: its payload was not read, so the
    stream cannot be followed; the receiver may still send an error reply to it."""

    def __init__(self, text: str, msg_id: int, cmd: int, flags: int) -> None:
        super().__init__(text)
        self.msg_id = msg_id
        self.cmd = cmd
        self.flags = flags


class DmaError(GuestMemoryError):
    """A device DMA that cannot be done: no mapping covers the address, the mapping does
    not allow the direction, or the client answered the DMA message with an error."""




# Socket flags as plain ints: `socket.MSG_*` are IntFlag members, and each `|` on them
# builds a new member (~2 us, several per guest access: the proxy transport's profile).
_SEND = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
_RECV = int(socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
_CTRUNC = int(socket.MSG_CTRUNC)
_FD_BYTES = array.array("i").itemsize
# Room for four times the fds we allow, so that a peer's excess fds arrive (and get closed
# by us, with an error reply) instead of being dropped by the kernel with MSG_CTRUNC.
_ANCILLARY = socket.CMSG_SPACE(4 * MAX_MSG_FDS * _FD_BYTES)
_SOL_SOCKET = socket.SOL_SOCKET
_SCM_RIGHTS = socket.SCM_RIGHTS




def _recv_into(sock: socket.socket, buf: bytearray, count: int, fds: list[int],
               deadline: float, what: str) -> bool:
    """Read until `buf` holds `count` bytes, collecting SCM_RIGHTS fds into `fds`.

    Returns False if the peer closed first; raises TimeoutError at the deadline.
    MSG_CTRUNC (more fds than even our generous buffer) is reported by a -1 in `fds`: the
    kernel closed the excess, and the caller refuses the message."""
    while len(buf) < count:
        try:
            data, ancdata, flags, _ = sock.recvmsg(count - len(buf), _ANCILLARY, _RECV)
        except BlockingIOError:
            wait_ready(sock, select.POLLIN, deadline, what)
            continue
        except ConnectionResetError:
            return False
        for level, kind, cdata in ancdata:
            if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
                fds.extend(array.array("i", cdata[:len(cdata) - len(cdata) % _FD_BYTES]))
        if flags & _CTRUNC:
            fds.append(-1)
        if not data:
            return False
        buf += data
    return True


def recv_message(sock: socket.socket, timeout: float) -> Message | None:
    """Receive exactly one whole message (any blocking mode of `sock`; it is not changed).

    Returns None when the peer closed the connection between messages (normal end).
    Raises TimeoutError when no message starts within `timeout`; ProtocolError for what
    cannot be framed: a header with msg_size < 16, a peer closing or stalling for more
    than `timeout` in the middle of a message; OversizedMessage (a ProtocolError) for a
    msg_size above MAX_MSG_SIZE, checked before the payload is read.  On any error every
    fd received so far is closed.  A -1 in `Message.fds` means more fds were sent than
    could be received (the kernel closed them): the message must be refused.
    """
    deadline = time.monotonic() + timeout
    fds: list[int] = []
    header = bytearray()
    try:
        try:
            whole = _recv_into(sock, header, HEADER.size, fds, deadline, "waiting for a message")
        except TimeoutError:
            if header or fds:
                raise ProtocolError(f"peer stalled for {timeout:g} s after {len(header)} of "
                                    f"{HEADER.size} header bytes") from None
            raise
        if not whole:
            if not header and not fds:
                return None
            raise ProtocolError(f"truncated header: peer closed after {len(header)} of "
                                f"{HEADER.size} bytes")
        msg_id, cmd, msg_size, flags, err = HEADER.unpack(header)
        if msg_size < HEADER.size:
            raise ProtocolError(f"{CMD_NAMES.get(cmd, f'command {cmd}')}: msg_size "
                                f"{msg_size} is smaller than the {HEADER.size}-byte header")
        if msg_size > MAX_MSG_SIZE:
            raise OversizedMessage(
                f"{CMD_NAMES.get(cmd, f'command {cmd}')}: msg_size {msg_size} exceeds our "
                f"maximum of {MAX_MSG_SIZE} bytes", msg_id, cmd, flags)
        payload = bytearray()
        size = msg_size - HEADER.size
        if size:
            try:
                whole = _recv_into(sock, payload, size, fds, deadline, "reading a payload")
            except TimeoutError:
                raise ProtocolError(
                    f"peer stalled for {timeout:g} s in the middle of a message "
                    f"({CMD_NAMES.get(cmd, cmd)}): {len(payload)} of {size} payload "
                    "bytes") from None
            if not whole:
                raise ProtocolError(
                    f"peer closed in the middle of a message ({CMD_NAMES.get(cmd, cmd)}): "
                    f"{len(payload)} of {size} payload bytes")
    except BaseException:
        close_fds([fd for fd in fds if fd >= 0])
        raise
    return Message(msg_id, cmd, flags, err, bytes(payload), tuple(fds))


def pack_message(msg_id: int, cmd: int, payload: bytes = b"", flags: int = TYPE_COMMAND,
                 err: int = 0, size: int | None = None) -> bytes:
    """Header + payload (`size` overrides msg_size: tests forge malformed messages)."""
    return HEADER.pack(msg_id, cmd, HEADER.size + len(payload) if size is None else size,
                       flags, err) + payload


def pack_reply(msg_id: int, cmd: int, payload: bytes = b"") -> bytes:
    """A reply echoes the command's msg_id and cmd (vfio-user.rst, "Header")."""
    return HEADER.pack(msg_id, cmd, HEADER.size + len(payload), TYPE_REPLY, 0) + payload


def pack_error(msg_id: int, cmd: int, err: int) -> bytes:
    """An error reply is the header only (vfio-user.rst, "Header": "If an error occurs,
    the reply message must only include the reply header")."""
    return HEADER.pack(msg_id, cmd, HEADER.size, TYPE_REPLY | FLAG_ERROR, err)


def send_bytes(sock: socket.socket, data: bytes, timeout: float) -> None:
    """Send `data` completely, or raise ProtocolError when the peer cannot take it in time.

    Send first, poll only when the socket is full: a reply nearly always fits, and one
    syscall fewer per guest access is measurable."""
    try:
        sent = sock.send(data, _SEND)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise ProtocolError(f"peer gone while sending: {exc}") from exc
    if sent == len(data):
        return
    view = memoryview(data)[sent:]
    deadline = time.monotonic() + timeout
    while view:
        try:
            sent = sock.send(view, _SEND)
        except BlockingIOError:
            try:
                wait_ready(sock, select.POLLOUT, deadline, "sending")
            except TimeoutError:
                raise ProtocolError(f"peer took no data for {timeout:g} s while we "
                                    "were sending") from None
            continue
        except OSError as exc:
            raise ProtocolError(f"peer gone while sending: {exc}") from exc
        view = view[sent:]


def send_reply(sock: socket.socket, msg: Message, payload: bytes, timeout: float) -> None:
    send_bytes(sock, pack_reply(msg.msg_id, msg.cmd, payload), timeout)


def send_error(sock: socket.socket, msg_id: int, cmd: int, err: int, timeout: float) -> None:
    send_bytes(sock, pack_error(msg_id, cmd, err), timeout)


# --- VERSION (vfio-user.rst, "Version") ------------------------------------------------


class PeerVersion(NamedTuple):
    major: int
    minor: int
    capabilities: dict[str, object]


def parse_version(payload: bytes) -> PeerVersion:
    """Decode a VERSION payload: major, minor, optional NUL-terminated JSON object with an
    optional "capabilities" object.  Raises ValueError for anything else."""
    if len(payload) < VERSION.size:
        raise ValueError(f"payload of {len(payload)} bytes, less than major and minor")
    major, minor = VERSION.unpack_from(payload)
    data = payload[VERSION.size:]
    caps: dict[str, object] = {}
    if data:
        text = data[:-1] if data.endswith(b"\0") else data
        if b"\0" in text:
            raise ValueError("version data has a NUL before its end")
        try:
            doc = json.loads(text.decode("utf-8")) if text.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"version data is not UTF-8 JSON: {exc}") from None
        except RecursionError:
            # Nesting deeper than the parser's recursion limit: a few KiB of "[" do it, and
            # the message size allows that (found by bench.robustness.fuzz_vfio_user).
            raise ValueError("version data is nested too deeply") from None
        if not isinstance(doc, dict):
            raise ValueError("version data is not a JSON object")
        got = doc.get("capabilities", {})
        if not isinstance(got, dict):
            raise ValueError("\"capabilities\" is not a JSON object")
        caps = got
    return PeerVersion(major, minor, caps)


def version_reply_payload(minor: int) -> bytes:
    """Our VERSION reply: major 0, `minor`, and the limits we enforce as capabilities (a
    subset of what QEMU proposes, as the spec requires), NUL-terminated."""
    caps = {"capabilities": {"max_msg_fds": MAX_MSG_FDS, "max_data_xfer_size": MAX_DATA_XFER,
                             "max_dma_maps": MAX_DMA_MAPS}}
    return VERSION.pack(0, minor) + json.dumps(caps, separators=(",", ":")).encode() + b"\0"


# --- server -> client DMA (vfio-user.rst, "VFIO_USER_DMA_READ", "VFIO_USER_DMA_WRITE") --


class MessageIds:
    """Our own msg_ids for server-to-client commands: they "belong entirely to the sender"
    (vfio-user.rst, "Header"), so a 16-bit counter is enough."""

    def __init__(self) -> None:
        self._next = 0

    def next(self) -> int:
        self._next = (self._next + 1) & 0xFFFF
        return self._next


def _await_reply(sock: socket.socket, msg_id: int, cmd: int, timeout: float,
                 other: Callable[[Message], None]) -> Message:
    """Receive until the reply to (msg_id, cmd) arrives, within `timeout` in all.

    Client commands arriving meanwhile are handed to `other` (the transport queues them:
    vfio-user.rst, "Command Concurrency": unrelated messages may come in between)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            msg = recv_message(sock, max(0.0, remaining))
        except TimeoutError:
            raise ProtocolError(f"no reply to our {CMD_NAMES[cmd]} (msg_id {msg_id}) "
                                f"within {timeout:g} s") from None
        if msg is None:
            raise ProtocolError(f"peer closed while we waited for the reply to our "
                                f"{CMD_NAMES[cmd]} (msg_id {msg_id})")
        if msg.flags & FLAG_TYPE_MASK == TYPE_REPLY and msg.msg_id == msg_id and msg.cmd == cmd:
            if msg.fds:
                close_fds([fd for fd in msg.fds if fd >= 0])
                raise ProtocolError(f"reply to our {CMD_NAMES[cmd]} carries "
                                    f"{len(msg.fds)} file descriptors")
            return msg
        other(msg)


def _dma_request(sock: socket.socket, ids: MessageIds, cmd: int, payload: bytes,
                 timeout: float, other: Callable[[Message], None]) -> Message:
    msg_id = ids.next()
    send_bytes(sock, pack_message(msg_id, cmd, payload), timeout)
    reply = _await_reply(sock, msg_id, cmd, timeout, other)
    if reply.flags & FLAG_ERROR:
        name = errno_codes.errorcode.get(reply.errno, str(reply.errno))
        raise DmaError(f"client refused our {CMD_NAMES[cmd]}: error {name}")
    return reply


def dma_read_message(sock: socket.socket, ids: MessageIds, addr: int, count: int,
                     timeout: float, other: Callable[[Message], None]) -> bytes:
    """One DMA_READ of `count` bytes at client address `addr` (count must respect the
    client's max_data_xfer_size and our MAX_DATA_XFER: the caller splits)."""
    reply = _dma_request(sock, ids, Cmd.DMA_READ, DMA_ACCESS.pack(addr, count), timeout,
                         other)
    if len(reply.payload) != DMA_ACCESS.size + count:
        raise ProtocolError(f"DMA_READ reply of {len(reply.payload)} payload bytes, "
                            f"expected {DMA_ACCESS.size + count}")
    raddr, rcount = DMA_ACCESS.unpack_from(reply.payload)
    if (raddr, rcount) != (addr, count):
        raise ProtocolError(f"DMA_READ reply for {raddr:#x}+{rcount}, we asked "
                            f"{addr:#x}+{count}")
    return reply.payload[DMA_ACCESS.size:]


_DMA_WRITE_REPLY_SHORT = struct.Struct("<QI")  # the spec's table: count as 4 bytes


def dma_write_message(sock: socket.socket, ids: MessageIds, addr: int, data: bytes,
                      timeout: float, other: Callable[[Message], None]) -> None:
    """One DMA_WRITE of `data` at client address `addr` (the caller splits, as above)."""
    reply = _dma_request(sock, ids, Cmd.DMA_WRITE,
                         DMA_ACCESS.pack(addr, len(data)) + data, timeout, other)
    # The struct (vfio_user_dma_region_access) has a u64 count, the spec's reply table a
    # 4-byte one: accept either.
    if len(reply.payload) == DMA_ACCESS.size:
        raddr, rcount = DMA_ACCESS.unpack(reply.payload)
    elif len(reply.payload) == _DMA_WRITE_REPLY_SHORT.size:
        raddr, rcount = _DMA_WRITE_REPLY_SHORT.unpack(reply.payload)
    else:
        raise ProtocolError(f"DMA_WRITE reply of {len(reply.payload)} payload bytes, "
                            f"expected {DMA_ACCESS.size}")
    if (raddr, rcount) != (addr, len(data)):
        raise ProtocolError(f"DMA_WRITE reply for {raddr:#x}+{rcount}, we wrote "
                            f"{addr:#x}+{len(data)}")
