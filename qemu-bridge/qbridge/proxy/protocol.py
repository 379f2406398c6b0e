"""The wire format of QEMU 7.2's x-pci-proxy-dev (multi-process QEMU), defined once.

Ref: QEMU 7.2 include/hw/remote/mpqemu-link.h (MPQemuMsg, MPQemuCmd, PciConfDataMsg,
BarAccessMsg, SyncSysmemMsg), hw/remote/mpqemu-link.c (mpqemu_msg_send/recv/valid),
hw/remote/proxy.c (what the proxy sends and when it waits for a reply).  Measured on
Debian's 1:7.2+dfsg-7+deb12u18: docs/measured-facts.md; our decisions:
docs/bridge-protocol.md.

A message is a 16-byte header (int32 cmd, 4 bytes padding, uint64 size) followed by `size`
payload bytes, all in host byte order, sent by QEMU in ONE sendmsg; file descriptors ride
on that same sendmsg as one SCM_RIGHTS control message.  QEMU's MPQemuMsg also has an
fds[] array and num_fds after the payload union, but those never go on the wire.
"""

from __future__ import annotations

import array
import logging
import select
import socket
import struct
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from qbridge.core import ProtocolError
from qbridge.sockio import close_fds, wait_ready

__all__ = [
    "BAR_PAYLOAD",
    "CONFIG_PAYLOAD",
    "HEADER",
    "MAX_FDS",
    "MAX_PAYLOAD",
    "REPLY_SIZE",
    "SYSMEM_PAYLOAD",
    "BarAccess",
    "Cmd",
    "ConfigAccess",
    "DeviceReset",
    "Message",
    "ProtocolError",
    "SetIrqfd",
    "SyncSysmem",
    "SysmemRegion",
    "close_fds",
    "pack_reply",
    "parse_message",
    "recv_message",
    "send_reply",
]

log = logging.getLogger("cosim.bridge.proxy")


class Cmd(IntEnum):
    """MPQemuCmd (mpqemu-link.h); the numbering is the ABI."""

    SYNC_SYSMEM = 0
    RET = 1
    PCI_CFGWRITE = 2
    PCI_CFGREAD = 3
    BAR_WRITE = 4
    BAR_READ = 5
    SET_IRQFD = 6
    DEVICE_RESET = 7


# '=' : native byte order, standard sizes, no implicit alignment (padding is explicit).
HEADER = struct.Struct("=i4xQ")  # int cmd; (pad); size_t size
CONFIG_PAYLOAD = struct.Struct("=IIi")  # PciConfDataMsg: uint32 addr, uint32 val, int len
# BarAccessMsg: hwaddr addr, uint64 val, unsigned size, bool memory, (3 bytes padding)
BAR_PAYLOAD = struct.Struct("=QQI?3x")
MAX_FDS = 8  # REMOTE_MAX_FDS
SYSMEM_PAYLOAD = struct.Struct(f"={MAX_FDS}Q{MAX_FDS}Q{MAX_FDS}q")  # gpas[], sizes[], offsets[]
MAX_PAYLOAD = SYSMEM_PAYLOAD.size  # 192: the largest member of MPQemuMsg's data union
REPLY = struct.Struct("=Q")  # the u64 of a RET
REPLY_SIZE = REPLY.size

assert HEADER.size == 16 and CONFIG_PAYLOAD.size == 12 and BAR_PAYLOAD.size == 24
assert MAX_PAYLOAD == 192

# Payload size each command must carry (mpqemu_msg_valid() and what proxy.c sends).
_PAYLOAD_SIZE = {
    Cmd.SYNC_SYSMEM: SYSMEM_PAYLOAD.size,
    Cmd.PCI_CFGWRITE: CONFIG_PAYLOAD.size,
    Cmd.PCI_CFGREAD: CONFIG_PAYLOAD.size,
    Cmd.BAR_WRITE: BAR_PAYLOAD.size,
    Cmd.BAR_READ: BAR_PAYLOAD.size,
    Cmd.SET_IRQFD: 0,
    Cmd.DEVICE_RESET: 0,
}
# Number of fds each command must carry: SYNC_SYSMEM one per region (1..8), SET_IRQFD
# exactly two (the interrupt eventfd and its resample eventfd), all others none.
_FD_COUNT = {Cmd.SYNC_SYSMEM: range(1, MAX_FDS + 1), Cmd.SET_IRQFD: range(2, 3)}

CONFIG_SPACE_LIMIT = 0x1000  # PCIe extended config space; QEMU never forwards beyond it


# The per-access types are NamedTuples, not frozen dataclasses: as immutable, and
# building one costs a third (every guest access decodes one; bench/README.md).
class ConfigAccess(NamedTuple):
    """PCI_CFGREAD / PCI_CFGWRITE: `addr` is the config-space offset, `length` 1, 2 or 4."""

    addr: int
    val: int
    length: int


class BarAccess(NamedTuple):
    """BAR_READ / BAR_WRITE: `addr` is the absolute bus address (BAR base + offset)."""

    addr: int
    val: int
    size: int
    memory: bool  # True: memory BAR; False: I/O BAR


class SysmemRegion(NamedTuple):
    """One guest-RAM region of SYNC_SYSMEM: guest-physical `gpa`, `size`, and the `offset`
    of that region inside the memory-backend file its fd refers to."""

    gpa: int
    size: int
    offset: int


@dataclass(frozen=True)
class SyncSysmem:
    regions: tuple[SysmemRegion, ...]


@dataclass(frozen=True)
class SetIrqfd:
    pass


@dataclass(frozen=True)
class DeviceReset:
    pass


Payload = ConfigAccess | BarAccess | SyncSysmem | SetIrqfd | DeviceReset


# proxy.c waits for a RET after these (mpqemu_msg_send_and_await_reply), never after
# SYNC_SYSMEM or SET_IRQFD: replying to those would desynchronise the stream.
_WANTS_REPLY = frozenset(
    (Cmd.PCI_CFGREAD, Cmd.PCI_CFGWRITE, Cmd.BAR_READ, Cmd.BAR_WRITE, Cmd.DEVICE_RESET))


class Message(NamedTuple):
    """One decoded message.  `fds` are owned by the receiver, who must close them."""

    cmd: Cmd
    payload: Payload
    fds: tuple[int, ...] = ()

    @property
    def wants_reply(self) -> bool:
        return self.cmd in _WANTS_REPLY

    def __str__(self) -> str:
        fds = f" fds={list(self.fds)}" if self.fds else ""
        match self.payload:
            case ConfigAccess(addr, val, length):
                value = f" val={val:#x}" if self.cmd is Cmd.PCI_CFGWRITE else ""
                return f"{self.cmd.name} addr={addr:#x} len={length}{value}"
            case BarAccess(addr, val, size, memory):
                value = f" val={val:#x}" if self.cmd is Cmd.BAR_WRITE else ""
                space = "mem" if memory else "io"
                return f"{self.cmd.name} {space} addr={addr:#x} size={size}{value}"
            case SyncSysmem(regions):
                table = ", ".join(f"{r.gpa:#x}+{r.size:#x}@{r.offset:#x}" for r in regions)
                return f"{self.cmd.name} [{table}]{fds}"
        return f"{self.cmd.name}{fds}"




def parse_message(header: bytes, payload: bytes, fds: tuple[int, ...] = ()) -> Message:
    """Decode one message.  On any error the fds are closed and ProtocolError is raised."""
    try:
        return _parse(header, payload, fds)
    except ProtocolError:
        close_fds(fds)
        raise


# Raw command -> (Cmd, payload size, allowed fd counts), for the header checks.
_COMMANDS = {
    int(cmd): (cmd, _PAYLOAD_SIZE[cmd], _FD_COUNT.get(cmd, range(0, 1)))
    for cmd in Cmd if cmd is not Cmd.RET
}


def _parse(header: bytes, payload: bytes, fds: tuple[int, ...]) -> Message:
    if len(header) != HEADER.size:
        raise ProtocolError(f"truncated header: {len(header)} of {HEADER.size} bytes")
    raw_cmd, size = HEADER.unpack(header)
    if size > MAX_PAYLOAD:
        raise ProtocolError(f"payload size {size} exceeds the maximum of {MAX_PAYLOAD} bytes")
    spec = _COMMANDS.get(raw_cmd)
    if spec is None:
        if raw_cmd == Cmd.RET:
            raise ProtocolError(
                "unexpected RET: QEMU's proxy only receives replies, never sends them")
        raise ProtocolError(f"unknown command {raw_cmd}")
    cmd, want_size, allowed = spec
    if len(payload) != size:
        raise ProtocolError(f"{cmd.name}: payload has {len(payload)} bytes, header says {size}")
    if size != want_size:
        raise ProtocolError(f"{cmd.name}: payload size {size}, expected {want_size}")
    if len(fds) not in allowed:
        if len(allowed) == 1:
            want = "none" if allowed.start == 0 else f"exactly {allowed.start}"
        else:
            want = f"{allowed.start}..{allowed.stop - 1}"
        raise ProtocolError(f"{cmd.name}: carries {len(fds)} file descriptors, expected {want}")

    body: Payload
    match cmd:  # BAR accesses first: a guest does nothing more often
        case Cmd.BAR_READ | Cmd.BAR_WRITE:
            addr, val, bsize, memory = BAR_PAYLOAD.unpack(payload)
            if bsize not in _BAR_SIZES:
                raise ProtocolError(f"{cmd.name}: BAR access size {bsize}, not 1, 2, 4 or 8")
            if cmd is Cmd.BAR_WRITE and val >> (8 * bsize):
                raise ProtocolError(f"{cmd.name}: value {val:#x} does not fit in {bsize} bytes")
            if addr + bsize > _ADDR_END:
                raise ProtocolError(f"{cmd.name}: access at {addr:#x}+{bsize} wraps the "
                                    "64-bit address space")
            body = BarAccess(addr, val, bsize, memory)
        case Cmd.PCI_CFGREAD | Cmd.PCI_CFGWRITE:
            addr, val, length = CONFIG_PAYLOAD.unpack(payload)
            if length not in (1, 2, 4):
                raise ProtocolError(f"{cmd.name}: config access length {length}, not 1, 2 or 4")
            if addr + length > CONFIG_SPACE_LIMIT:
                raise ProtocolError(f"{cmd.name}: config access at {addr:#x}+{length} is "
                                    f"beyond the {CONFIG_SPACE_LIMIT:#x}-byte config space")
            if cmd is Cmd.PCI_CFGWRITE and val >> (8 * length):
                raise ProtocolError(f"{cmd.name}: value {val:#x} does not fit in {length} bytes")
            body = ConfigAccess(addr, val, length)
        case Cmd.SYNC_SYSMEM:
            fields = SYSMEM_PAYLOAD.unpack(payload)
            gpas, sizes, offsets = (fields[i * MAX_FDS:(i + 1) * MAX_FDS] for i in range(3))
            # The region count is the fd count (remote-memory.c iterates over num_fds).
            body = SyncSysmem(tuple(
                SysmemRegion(gpas[i], sizes[i], offsets[i]) for i in range(len(fds))
            ))
        case Cmd.SET_IRQFD:
            body = SetIrqfd()
        case Cmd.DEVICE_RESET:
            body = DeviceReset()
    return Message(cmd, body, fds)


_RET_HEADER = HEADER.pack(Cmd.RET, REPLY.size)
# Socket flags as plain ints: `socket.MSG_*` are IntFlag members, and every `|` or `&` on
# them builds a new enum member (~2 us each here, several per guest access; cProfile).
_SEND = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
_RECV = int(socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
_PEEK = int(socket.MSG_DONTWAIT | socket.MSG_PEEK)
_CTRUNC = int(socket.MSG_CTRUNC)


def pack_reply(value: int) -> bytes:
    """A RET: cmd 1, size 8, the u64 value (all that matters for writes is that it comes)."""
    return _RET_HEADER + REPLY.pack(value & 0xFFFF_FFFF_FFFF_FFFF)


def send_reply(sock: socket.socket, value: int, timeout: float) -> None:
    """Send a RET completely, or raise ProtocolError when the peer cannot take it in time."""
    reply = pack_reply(value)
    # Send first, poll only when the socket is full: a 24-byte reply nearly always fits,
    # and one syscall fewer per guest access is measurable (bench/README.md).
    try:
        sent = sock.send(reply, _SEND)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise ProtocolError(f"peer gone while sending a reply: {exc}") from exc
    if sent == len(reply):
        return
    data = memoryview(reply)[sent:]
    deadline = time.monotonic() + timeout
    while data:
        try:
            sent = sock.send(data, _SEND)
        except BlockingIOError:
            wait_ready(sock, select.POLLOUT, deadline, "sending a reply")
            continue
        except OSError as exc:
            raise ProtocolError(f"peer gone while sending a reply: {exc}") from exc
        data = data[sent:]


_FD_BYTES = array.array("i").itemsize
# Room for more fds than any message may carry, so that a misbehaving peer's extra fds
# arrive (and get closed by us) instead of being truncated silently by the kernel.
_ANCILLARY = socket.CMSG_SPACE(4 * MAX_FDS * _FD_BYTES)




def _recv_into(sock: socket.socket, buf: bytearray, count: int, deadline: float, what: str,
               fds: list[int]) -> None:
    """Read until `buf` holds `count` bytes, collecting any SCM_RIGHTS fds into `fds`.

    Stops short only when the peer closed the connection; raises TimeoutError at the
    deadline (`buf` then shows how far it got)."""
    while len(buf) < count:
        # Receive first, poll only when nothing is queued: QEMU sends a message in one
        # sendmsg, so the payload is there once the header is (one syscall fewer each).
        try:
            data, ancdata, flags, _ = sock.recvmsg(
                count - len(buf), _ANCILLARY, _RECV
            )
        except BlockingIOError:
            wait_ready(sock, select.POLLIN, deadline, what)
            continue
        except ConnectionResetError:
            return
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(cdata) - len(cdata) % _FD_BYTES
                fds.extend(array.array("i", cdata[:usable]))
        if flags & _CTRUNC:
            raise ProtocolError(f"{what}: more file descriptors than any message may carry")
        if not data:
            return
        buf += data


def recv_message(sock: socket.socket, timeout: float) -> Message | None:
    """Receive exactly one message from `sock` (any blocking mode; it is not changed).

    Returns None when the peer closed the connection between messages (normal shutdown).
    Raises TimeoutError when no message starts within `timeout` seconds, and
    ProtocolError for a malformed message, or a peer closing or stalling for more than
    `timeout` seconds in the middle of a message.  The caller owns `Message.fds`; on any
    error the fds received so far are closed.
    """
    fast = _recv_whole(sock)
    if fast is not None:
        return fast
    deadline = time.monotonic() + timeout
    fds: list[int] = []
    header = bytearray()
    payload = bytearray()
    try:
        try:
            _recv_into(sock, header, HEADER.size, deadline, "waiting for a message", fds)
        except TimeoutError:
            if header or fds:
                raise ProtocolError(f"peer stalled for {timeout} s after {len(header)} of "
                                    f"{HEADER.size} header bytes") from None
            raise
        if not header and not fds:
            return None
        if len(header) < HEADER.size:
            raise ProtocolError(f"truncated header: peer closed after {len(header)} of "
                                f"{HEADER.size} bytes")
        raw_cmd, size = HEADER.unpack(header)
        if size > MAX_PAYLOAD:  # checked before reading: never swallow the next message
            raise ProtocolError(f"payload size {size} exceeds the maximum of {MAX_PAYLOAD} bytes")
        try:
            _recv_into(sock, payload, size, deadline, "reading a payload", fds)
        except TimeoutError:
            raise ProtocolError(f"peer stalled for {timeout} s in the middle of a message "
                                f"(command {raw_cmd}): {len(payload)} of {size} payload "
                                "bytes") from None
        if len(payload) < size:
            raise ProtocolError(f"peer closed in the middle of a message (command {raw_cmd}): "
                                f"{len(payload)} of {size} payload bytes")
    except BaseException:
        close_fds(fds)
        raise
    return parse_message(bytes(header), bytes(payload), tuple(fds))


# Messages small enough for the fast path: config and BAR accesses, which carry no fds.
_FAST_PAYLOAD = max(CONFIG_PAYLOAD.size, BAR_PAYLOAD.size)
_BAR_SIZES = (1, 2, 4, 8)
_ADDR_END = 1 << 64


def _recv_whole(sock: socket.socket) -> Message | None:
    """The common case in two receives: a whole config or BAR message already queued.

    QEMU sends a message in one sendmsg, so once it is readable its header and payload are
    there.  Peek at what is queued; only when that holds a whole message of the fast kinds
    take exactly it (with any fds, which such a message must not carry: the full parser
    says so).  Anything else -- nothing queued, a partial or oversized message, SYNC_SYSMEM
    or SET_IRQFD -- is left, unconsumed, to the general path and its errors."""
    try:
        queued = sock.recv(HEADER.size + _FAST_PAYLOAD, _PEEK)
    except (BlockingIOError, ConnectionResetError):
        return None
    if len(queued) < HEADER.size:
        return None
    raw_cmd, size = HEADER.unpack_from(queued)
    if raw_cmd in _FD_COUNT or size > _FAST_PAYLOAD or len(queued) < HEADER.size + size:
        return None
    data, ancdata, flags, _ = sock.recvmsg(HEADER.size + size, _ANCILLARY,
                                           _RECV)
    fds: list[int] = []
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", cdata[:len(cdata) - len(cdata) % _FD_BYTES]))
    if flags & _CTRUNC:
        close_fds(fds)
        raise ProtocolError("more file descriptors than any message may carry")
    if len(data) != HEADER.size + size:  # peeked whole, so cannot happen; never guess
        close_fds(fds)
        raise ProtocolError(f"command {raw_cmd}: {len(data)} of {HEADER.size + size} "
                            "peeked bytes could be read")
    return parse_message(data[:HEADER.size], data[HEADER.size:], tuple(fds))
