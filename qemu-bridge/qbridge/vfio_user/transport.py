"""The vfio-user server side of one connection: QEMU's `vfio-user-pci` device is the client.

`VfioUserTransport(sock)` implements the core's Transport protocol (`name`, `fileno`,
`on_readable`, `close`): the core polls `fileno()` and calls `on_readable(core)` when QEMU
sent something; each message becomes `core.host` config or memory accesses (the one
transaction API of models.contract.transaction), a device reset (`core.reset()`), or state kept
here: the DMA map table (with guest RAM mapped when QEMU passes its memfd) and the IRQ
eventfds.  For the device side it offers `trigger(index, vector)` and
`dma_read`/`dma_write`.

Ref: QEMU docs/interop/vfio-user.rst (sections cited per command), linux/vfio.h (the
region/IRQ semantics of vfio-pci that QEMU's client expects).  Decisions, and what QEMU
sends when: docs/bridge-protocol.md, "vfio-user".

Lock-step like the proxy transport: no asyncio primitive is used, only the Host and the
core's reset are awaited, and every wait is a bounded `poll` (see the core: under cocotb
simulated time stands still while QEMU is idle).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import select
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from models.contract.regmap import BAR0_SIZE, CONFIG_SPACE_SIZE
from models.contract.transaction import Host, Space
from qbridge.vfio_user import protocol as p
from qbridge.vfio_user.protocol import (
    CMD_NAMES,
    FLAG_NO_REPLY,
    FLAG_TYPE_MASK,
    HEADER,
    REGION_ACCESS,
    TYPE_COMMAND,
    TYPE_REPLY,
    DmaError,
    Message,
    OversizedMessage,
    ProtocolError,
    close_fds,
    recv_message,
    send_bytes,
)

__all__ = ["BAR0_ADDRESS_MASK", "DmaRegion", "VfioUserTransport"]

log = logging.getLogger("cosim.bridge.vfio_user")

# A BAR's base is aligned to its size (PCI 3.0, 6.2.5.1): these are the address bits of
# BAR0, the same bits the device compares when it decodes a memory request.
BAR0_ADDRESS_MASK = ~(BAR0_SIZE - 1) & 0xFFFF_FFFF
_BAR0_DW = 0x10

# Region table of a vfio-pci device (vfio-user.rst, "VFIO_USER_DEVICE_GET_REGION_INFO";
# linux/vfio.h VFIO_PCI_*_REGION_INDEX): index -> (flags, size).  No region is mappable:
# every BAR access is a REGION_READ/WRITE, which is what lets the device see it.
_RW = p.REGION_INFO_FLAG_READ | p.REGION_INFO_FLAG_WRITE
_REGIONS: dict[int, tuple[int, int]] = {i: (0, 0) for i in range(p.PCI_NUM_REGIONS)}
_REGIONS[p.PCI_BAR0_REGION_INDEX] = (_RW, BAR0_SIZE)
_REGIONS[p.PCI_CONFIG_REGION_INDEX] = (_RW, CONFIG_SPACE_SIZE)

# IRQ table (vfio-user.rst, "VFIO_USER_DEVICE_GET_IRQ_INFO"), with the flags the kernel's
# vfio-pci reports (vfio_pci_ioctl_get_irq_info): INTx is maskable and automasked, every
# other index NORESIZE.  One INTx (pin A), one MSI vector, no MSI-X, no ERR or REQ.
_INTX_FLAGS = p.IRQ_INFO_EVENTFD | p.IRQ_INFO_MASKABLE | p.IRQ_INFO_AUTOMASKED
_OTHER_FLAGS = p.IRQ_INFO_EVENTFD | p.IRQ_INFO_NORESIZE
_IRQS: dict[int, tuple[int, int]] = {
    p.PCI_INTX_IRQ_INDEX: (_INTX_FLAGS, 1),
    p.PCI_MSI_IRQ_INDEX: (_OTHER_FLAGS, 1),
    p.PCI_MSIX_IRQ_INDEX: (_OTHER_FLAGS, 0),
    p.PCI_ERR_IRQ_INDEX: (_OTHER_FLAGS, 0),
    p.PCI_REQ_IRQ_INDEX: (_OTHER_FLAGS, 0),
}

_BAR_SIZES = frozenset((1, 2, 4, 8))
_MEM = Space.MEM  # attribute lookups on an enum class cost, and this is per guest access
# The commands whose fds the handler keeps on success (SET_IRQS' eventfds).  DMA_MAP's fd
# is closed once mapped: the mapping stays valid without it (CPython's mmap object keeps
# a dup of its own, closed with the mapping at DMA_UNMAP or `close()`).
_FD_COMMANDS = frozenset((p.Cmd.DMA_MAP, p.Cmd.DEVICE_SET_IRQS))


class Core(Protocol):
    """What the transport uses of qbridge.core.DeviceCore."""

    host: Host
    counts: dict[str, int]
    message_timeout: float

    async def reset(self) -> None: ...


class _Refused(Exception):
    """A command we answer with an error reply; the connection goes on."""

    def __init__(self, err: int, reason: str) -> None:
        super().__init__(reason)
        self.err = err
        self.reason = reason


@dataclass
class DmaRegion:
    """One DMA_MAP window: client DMA address `addr`, `size`, VFIO DMA `flags`, and the
    mmap of its memfd (`view` starts at `addr`) or None: then DMA goes by messages."""

    addr: int
    size: int
    flags: int
    offset: int
    mapping: mmap.mmap | None = None
    view: memoryview | None = None

    @property
    def end(self) -> int:
        return self.addr + self.size

    def release(self) -> None:
        if self.view is not None:
            self.view.release()
            self.view = None
        if self.mapping is not None:
            self.mapping.close()
            self.mapping = None


@dataclass
class _Irq:
    """State of one IRQ index: per vector the trigger, mask and unmask eventfds (None:
    not armed), whether it is masked, and whether a trigger came while masked."""

    count: int
    trigger: list[int | None] = field(default_factory=list)
    mask_fd: list[int | None] = field(default_factory=list)
    unmask_fd: list[int | None] = field(default_factory=list)
    masked: list[bool] = field(default_factory=list)
    pending: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.trigger = [None] * self.count
        self.mask_fd = [None] * self.count
        self.unmask_fd = [None] * self.count
        self.masked = [False] * self.count
        self.pending = [False] * self.count

    def fds(self) -> list[int]:
        return [fd for table in (self.trigger, self.mask_fd, self.unmask_fd)
                for fd in table if fd is not None]


def _signal(fd: int) -> None:
    """Add 1 to a client's eventfd without ever waiting for the client.

    An eventfd's counter stops at 2**64 - 2; a write past it blocks (a blocking eventfd:
    the server hung for good, found by fuzz_vfio_user) or fails with EAGAIN.  A counter
    that high already reads as signalled, so nothing is lost by not adding to it.  The
    poll says whether a write of 1 fits; the client could fill the counter in between,
    which only a client racing us on purpose does."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if poller.poll(0):
        try:
            os.eventfd_write(fd, 1)
            return
        except BlockingIOError:
            pass
    log.debug("eventfd %d: counter at its maximum, already signalled", fd)


def _is_eventfd(fd: int) -> bool:
    """Whether `fd` is an eventfd (Linux names its anonymous inode so in /proc)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def _errname(err: int) -> str:
    return errno.errorcode.get(err, str(err))


def _pieces(offset: int, count: int) -> list[tuple[int, int]]:
    """Split a config access into naturally aligned 1/2/4-byte pieces: QEMU reads and
    writes the config region in bulk (the whole header at realize), Host takes 1, 2, 4."""
    out = []
    pos, end = offset, offset + count
    while pos < end:
        left = end - pos
        size = 4 if not pos & 3 and left >= 4 else 2 if not pos & 1 and left >= 2 else 1
        out.append((pos, size))
        pos += size
    return out


class VfioUserTransport:
    """The vfio-user server of one connected client on `sock` (a connected AF_UNIX stream
    socket; its blocking mode is left alone, every receive and send is non-blocking with
    bounded polls).  The transport never closes `sock`; `close()` closes what it received
    (eventfds, the mappings of guest RAM, fds of queued messages)."""

    name = "vfio-user"

    def __init__(self, sock: socket.socket, message_timeout: float = 10.0) -> None:
        self.sock = sock
        self.message_timeout = message_timeout  # replaced by the core's at each message
        self.versioned = False
        self.peer_max_data_xfer = p.DEFAULT_PEER_MAX_DATA_XFER
        self.peer_max_msg_fds = 1
        self.bar0_base = 0  # shadow of the device's BAR0 register (its address bits)
        self.dma: list[DmaRegion] = []
        self.irqs: dict[int, _Irq] = {i: _Irq(n) for i, (_, n) in _IRQS.items()}
        self._ids = p.MessageIds()
        self._queued: deque[Message] = deque()  # client commands that came during our DMA
        self._closed = False
        self._handlers = {
            p.Cmd.VERSION: self._version,
            p.Cmd.DMA_MAP: self._dma_map,
            p.Cmd.DMA_UNMAP: self._dma_unmap,
            p.Cmd.DEVICE_GET_INFO: self._get_info,
            p.Cmd.DEVICE_GET_REGION_INFO: self._get_region_info,
            p.Cmd.DEVICE_GET_IRQ_INFO: self._get_irq_info,
            p.Cmd.DEVICE_SET_IRQS: self._set_irqs,
            p.Cmd.REGION_READ: self._region_read,
            p.Cmd.REGION_WRITE: self._region_write,
            p.Cmd.DEVICE_RESET: self._reset,
        }

    # --- the Transport protocol ---------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno()

    async def on_readable(self, core: Core) -> bool:
        """Handle one message from the socket and any queued during it; False when the
        client closed the connection between messages (normal end)."""
        self.message_timeout = core.message_timeout
        try:
            msg = recv_message(self.sock, self.message_timeout)
        except OversizedMessage as exc:
            core.counts[CMD_NAMES.get(exc.cmd, "unknown")] += 1
            if exc.flags & FLAG_TYPE_MASK == TYPE_COMMAND and not exc.flags & FLAG_NO_REPLY:
                # Say why before closing; the payload was not read, so we cannot go on.
                send_bytes(self.sock, p.pack_error(exc.msg_id, exc.cmd, errno.E2BIG),
                           self.message_timeout)
            raise
        except TimeoutError:
            log.debug("readable, but no message within %g s", self.message_timeout)
            return True
        if msg is None:
            log.info("client closed the vfio-user connection")
            return False
        await self._handle(core, msg)
        while self._queued:
            await self._handle(core, self._queued.popleft())
        return True

    def close(self) -> None:
        """Close every fd and mapping received (vfio-user.rst, "Client Disconnection":
        client memory unmapped, IRQ fds closed; the device state is kept).  Idempotent."""
        for region in self.dma:
            region.release()
        self.dma.clear()
        for irq in self.irqs.values():
            close_fds(irq.fds())
        self.irqs = {i: _Irq(n) for i, (_, n) in _IRQS.items()}
        while self._queued:
            close_fds([fd for fd in self._queued.popleft().fds if fd >= 0])
        self._closed = True

    # --- dispatch -----------------------------------------------------------------------

    async def _handle(self, core: Core, msg: Message) -> None:
        cmd = msg.cmd
        name = CMD_NAMES.get(cmd, "unknown")
        core.counts[name] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("received %s", msg)
        flags = msg.flags
        if cmd == 9 and not flags and not msg.fds and self.versioned:
            # The guest's BAR0 read (vfio-user.rst, "VFIO_USER_REGION_READ"), the most
            # frequent message, straight through when it is a valid one.
            payload = msg.payload
            if len(payload) == 16:
                offset, region, count = REGION_ACCESS.unpack(payload)
                if not region and count in _BAR_SIZES and offset + count <= BAR0_SIZE:
                    value = await core.host.read(_MEM, self.bar0_base + offset, count)
                    send_bytes(self.sock, HEADER.pack(msg.msg_id, 9, 32 + count, TYPE_REPLY, 0)
                               + payload + value.to_bytes(count, "little"),
                               self.message_timeout)
                    return
        kind = flags & FLAG_TYPE_MASK
        fds = msg.fds
        if kind == TYPE_REPLY:
            close_fds([fd for fd in fds if fd >= 0])
            raise ProtocolError(f"unexpected {name} reply (msg_id {msg.msg_id}): we sent no "
                                "command waiting for it")
        if kind != TYPE_COMMAND:
            self._refuse(msg, errno.EINVAL, f"message type {kind} is neither command nor reply")
            return
        if not self.versioned and cmd != p.Cmd.VERSION:
            self._refuse(msg, errno.EINVAL, "VERSION must be the first message")
            raise ProtocolError(f"{name} before VERSION: the client must negotiate first")
        handler = self._handlers.get(cmd)
        if handler is None:
            self._refuse(msg, errno.ENOTSUP, "command not supported")
            return
        if fds:
            if -1 in fds or len(fds) > p.MAX_MSG_FDS:
                self._refuse(msg, errno.EINVAL,
                             f"more than our max_msg_fds of {p.MAX_MSG_FDS} file descriptors")
                return
            if cmd not in _FD_COMMANDS:
                self._refuse(msg, errno.EINVAL,
                             f"carries {len(fds)} file descriptors, takes none")
                return
        kept = False
        try:
            reply = await handler(core, msg)
            kept = cmd == p.Cmd.DEVICE_SET_IRQS
        except _Refused as exc:
            self._refuse(msg, exc.err, exc.reason)
            return
        finally:
            if fds and not kept:
                close_fds(fds)
        if flags & FLAG_NO_REPLY:
            return
        send_bytes(self.sock, p.pack_reply(msg.msg_id, cmd, reply), self.message_timeout)

    def _refuse(self, msg: Message, err: int, reason: str) -> None:
        """One log line, the fds closed, and an error reply unless the command is posted
        (No_reply: vfio-user.rst, "Header" -- then nothing may be sent, not even this)."""
        close_fds([fd for fd in msg.fds if fd >= 0])
        name = CMD_NAMES.get(msg.cmd, f"command {msg.cmd}")
        if msg.flags & FLAG_NO_REPLY:
            log.warning("%s (msg_id %d, posted): %s; %s not reported (no reply wanted)",
                        name, msg.msg_id, reason, _errname(err))
            return
        log.warning("%s (msg_id %d): %s; error reply %s", name, msg.msg_id, reason,
                    _errname(err))
        send_bytes(self.sock, p.pack_error(msg.msg_id, msg.cmd, err), self.message_timeout)

    # --- VERSION (vfio-user.rst, "VFIO_USER_VERSION") ------------------------------------

    async def _version(self, core: Core, msg: Message) -> bytes:
        if self.versioned:
            raise _Refused(errno.EINVAL, "second VERSION: the version is already negotiated")
        try:
            peer = p.parse_version(msg.payload)
            max_xfer = peer.capabilities.get("max_data_xfer_size", p.DEFAULT_PEER_MAX_DATA_XFER)
            max_fds = peer.capabilities.get("max_msg_fds", 1)
            if not isinstance(max_xfer, int) or isinstance(max_xfer, bool) or max_xfer < 1:
                raise ValueError(f"max_data_xfer_size {max_xfer!r} is not a positive integer")
            if not isinstance(max_fds, int) or isinstance(max_fds, bool) or max_fds < 0:
                raise ValueError(f"max_msg_fds {max_fds!r} is not a non-negative integer")
        except ValueError as exc:
            self._refuse(msg, errno.EINVAL, f"malformed VERSION: {exc}")
            raise ProtocolError(f"malformed VERSION: {exc}") from None
        if peer.major != 0:
            # "If the client does not support the proposed major, it closes the connection":
            # we only speak major 0, so we refuse and close.
            self._refuse(msg, errno.ENOTSUP, f"major version {peer.major}, we speak 0")
            raise ProtocolError(f"client proposes vfio-user major {peer.major}; we speak 0")
        self.peer_max_data_xfer = max_xfer
        self.peer_max_msg_fds = max_fds
        self.versioned = True
        await self._refresh_bar0(core)
        log.info("vfio-user %d.%d negotiated (client proposed %d.%d, max_data_xfer_size %d)",
                 0, 0, peer.major, peer.minor, max_xfer)
        return p.version_reply_payload(0)  # minor: min(client's, our 0)

    # --- DMA_MAP / DMA_UNMAP (vfio-user.rst, "VFIO_USER_DMA_MAP", "..._UNMAP") ----------

    async def _dma_map(self, core: Core, msg: Message) -> bytes:
        if len(msg.payload) != p.DMA_MAP.size:
            raise _Refused(errno.EINVAL, f"payload of {len(msg.payload)} bytes, expected "
                                         f"{p.DMA_MAP.size}")
        argsz, flags, offset, addr, size = p.DMA_MAP.unpack(msg.payload)
        if argsz != p.DMA_MAP.size:
            raise _Refused(errno.EINVAL, f"argsz {argsz}, expected {p.DMA_MAP.size}")
        if flags & ~(p.DMA_MAP_FLAG_READ | p.DMA_MAP_FLAG_WRITE):
            raise _Refused(errno.EINVAL, f"unknown flags {flags:#x}")
        if size == 0 or addr + size > 1 << 64:
            raise _Refused(errno.EINVAL, f"window {addr:#x}+{size:#x} is empty or wraps")
        if len(msg.fds) > 1:
            raise _Refused(errno.EINVAL, f"{len(msg.fds)} file descriptors, at most one")
        if len(self.dma) >= p.MAX_DMA_MAPS:
            raise _Refused(errno.ENOSPC, f"already {len(self.dma)} DMA windows, our "
                                         f"max_dma_maps")
        for region in self.dma:
            if addr < region.end and region.addr < addr + size:
                raise _Refused(errno.EEXIST, f"window {addr:#x}+{size:#x} overlaps the map "
                                             f"{region.addr:#x}+{region.size:#x}")
        region = DmaRegion(addr, size, flags, offset)
        if msg.fds:
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if flags & p.DMA_MAP_FLAG_WRITE else 0)
            base = offset - offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets: page aligned
            try:
                region.mapping = mmap.mmap(msg.fds[0], size + offset - base, mmap.MAP_SHARED,
                                           prot, offset=base)
            except (OSError, ValueError, OverflowError) as exc:
                raise _Refused(errno.EINVAL, f"cannot map the fd of {addr:#x}+{size:#x} at "
                                             f"offset {offset:#x}: {exc}") from None
            region.view = memoryview(region.mapping)[offset - base:offset - base + size]
        self.dma.append(region)
        log.debug("DMA map %#x+%#x flags %#x %s", addr, size, flags,
                  f"mapped at offset {offset:#x}" if msg.fds else "by messages")
        return b""

    async def _dma_unmap(self, core: Core, msg: Message) -> bytes:
        if len(msg.payload) != p.DMA_UNMAP.size:
            raise _Refused(errno.EINVAL, f"payload of {len(msg.payload)} bytes, expected "
                                         f"{p.DMA_UNMAP.size}")
        argsz, flags, addr, size = p.DMA_UNMAP.unpack(msg.payload)
        if argsz < p.DMA_UNMAP.size:
            raise _Refused(errno.EINVAL, f"argsz {argsz}, less than {p.DMA_UNMAP.size}")
        if flags & p.DMA_UNMAP_FLAG_GET_DIRTY_BITMAP:
            raise _Refused(errno.ENOTSUP, "dirty page tracking is not supported")
        if flags & ~p.DMA_UNMAP_FLAG_ALL:
            raise _Refused(errno.EINVAL, f"unknown flags {flags:#x}")
        if flags & p.DMA_UNMAP_FLAG_ALL:
            if addr or size:
                raise _Refused(errno.EINVAL, "unmap-all with an address or size")
            for region in self.dma:
                region.release()
            self.dma.clear()
            return msg.payload
        for i, region in enumerate(self.dma):
            # "The address and size of the DMA region being unmapped must match exactly".
            if region.addr == addr and region.size == size:
                region.release()
                del self.dma[i]
                return msg.payload  # "The server responds with the original DMA entry"
        raise _Refused(errno.EINVAL, f"no DMA map {addr:#x}+{size:#x} to unmap")

    # --- device, region and IRQ information ----------------------------------------------

    async def _get_info(self, core: Core, msg: Message) -> bytes:
        # vfio-user.rst, "VFIO_USER_DEVICE_GET_INFO".
        if len(msg.payload) != p.DEVICE_INFO.size:
            raise _Refused(errno.EINVAL, f"payload of {len(msg.payload)} bytes, expected "
                                         f"{p.DEVICE_INFO.size}")
        argsz = p.DEVICE_INFO.unpack(msg.payload)[0]
        if argsz < p.DEVICE_INFO.size:
            raise _Refused(errno.EINVAL, f"argsz {argsz}, less than {p.DEVICE_INFO.size}")
        return p.DEVICE_INFO.pack(p.DEVICE_INFO.size, p.DEVICE_FLAGS_PCI | p.DEVICE_FLAGS_RESET,
                                  p.PCI_NUM_REGIONS, p.PCI_NUM_IRQS)

    async def _get_region_info(self, core: Core, msg: Message) -> bytes:
        # vfio-user.rst, "VFIO_USER_DEVICE_GET_REGION_INFO": absent regions have size 0.
        if len(msg.payload) != p.REGION_INFO.size:
            raise _Refused(errno.EINVAL, f"payload of {len(msg.payload)} bytes, expected "
                                         f"{p.REGION_INFO.size}")
        argsz, _, index, _, _, _ = p.REGION_INFO.unpack(msg.payload)
        if argsz < p.REGION_INFO.size:
            raise _Refused(errno.EINVAL, f"argsz {argsz}, less than {p.REGION_INFO.size}")
        if index not in _REGIONS:
            raise _Refused(errno.EINVAL, f"no region {index}")
        flags, size = _REGIONS[index]
        return p.REGION_INFO.pack(p.REGION_INFO.size, flags, index, 0, size, 0)

    async def _get_irq_info(self, core: Core, msg: Message) -> bytes:
        # vfio-user.rst, "VFIO_USER_DEVICE_GET_IRQ_INFO".
        if len(msg.payload) != p.IRQ_INFO.size:
            raise _Refused(errno.EINVAL, f"payload of {len(msg.payload)} bytes, expected "
                                         f"{p.IRQ_INFO.size}")
        argsz, _, index, _ = p.IRQ_INFO.unpack(msg.payload)
        if argsz < p.IRQ_INFO.size:
            raise _Refused(errno.EINVAL, f"argsz {argsz}, less than {p.IRQ_INFO.size}")
        if index not in _IRQS:
            raise _Refused(errno.EINVAL, f"no IRQ index {index}")
        flags, count = _IRQS[index]
        return p.IRQ_INFO.pack(p.IRQ_INFO.size, flags, index, count)

    # --- SET_IRQS (vfio-user.rst, "VFIO_USER_DEVICE_SET_IRQS") ---------------------------

    async def _set_irqs(self, core: Core, msg: Message) -> bytes:
        payload = msg.payload
        if len(payload) < p.IRQ_SET.size:
            raise _Refused(errno.EINVAL, f"payload of {len(payload)} bytes, less than "
                                         f"{p.IRQ_SET.size}")
        argsz, flags, index, start, count = p.IRQ_SET.unpack_from(payload)
        # "argsz is the size of the VFIO IRQ set request payload, including any data".
        if argsz != len(payload):
            raise _Refused(errno.EINVAL, f"argsz {argsz}, payload is {len(payload)} bytes")
        data_type = flags & p.IRQ_SET_DATA_TYPE_MASK
        action = flags & p.IRQ_SET_ACTION_TYPE_MASK
        if flags & ~(p.IRQ_SET_DATA_TYPE_MASK | p.IRQ_SET_ACTION_TYPE_MASK):
            raise _Refused(errno.EINVAL, f"unknown flags {flags:#x}")
        if data_type.bit_count() != 1 or action.bit_count() != 1:
            raise _Refused(errno.EINVAL, f"flags {flags:#x}: need exactly one data type and "
                                         "one action")
        irq = self.irqs.get(index)
        if irq is None:
            raise _Refused(errno.EINVAL, f"no IRQ index {index}")
        fds = msg.fds
        if fds and data_type != p.IRQ_SET_DATA_EVENTFD:
            raise _Refused(errno.EINVAL, f"{len(fds)} file descriptors without DATA_EVENTFD")
        if count == 0:
            # "a count (and start) of 0, with data flags of VFIO_IRQ_SET_DATA_NONE disables
            # all interrupts of the index".
            if data_type != p.IRQ_SET_DATA_NONE or action != p.IRQ_SET_ACTION_TRIGGER or start:
                raise _Refused(errno.EINVAL, "count 0 is only DATA_NONE|ACTION_TRIGGER at "
                                             "start 0 (disable the index)")
            if len(payload) != p.IRQ_SET.size:
                raise _Refused(errno.EINVAL, "DATA_NONE with data")
            close_fds(irq.fds())
            self.irqs[index] = _Irq(irq.count)
            log.debug("IRQ index %d disabled", index)
            return b""
        if start + count > irq.count:
            raise _Refused(errno.EINVAL, f"vectors {start}..{start + count - 1} of index "
                                         f"{index}, which has {irq.count}")
        if action != p.IRQ_SET_ACTION_TRIGGER and not _IRQS[index][0] & p.IRQ_INFO_MASKABLE:
            raise _Refused(errno.EINVAL, f"IRQ index {index} is not maskable")
        vectors = range(start, start + count)
        if data_type == p.IRQ_SET_DATA_EVENTFD:
            if len(payload) != p.IRQ_SET.size:
                raise _Refused(errno.EINVAL, "DATA_EVENTFD with data in the payload")
            # QEMU sends the eventfds as SCM_RIGHTS, one per vector; a run of -1 entries
            # of the ioctl's array (unset those vectors) goes as a message without fds.
            if len(fds) not in (0, count):
                raise _Refused(errno.EINVAL, f"{len(fds)} file descriptors for {count} vectors")
            # Each must be an eventfd, as the kernel's VFIO_DEVICE_SET_IRQS insists: we
            # write to it at every trigger, and a memfd would take the bytes, a read-only
            # fd fail the write (EBADF escaped the server; found by fuzz_vfio_user).
            if not all(_is_eventfd(fd) for fd in fds):
                raise _Refused(errno.EINVAL, "DATA_EVENTFD with a file descriptor that is "
                                             "not an eventfd")
            table = (irq.trigger if action == p.IRQ_SET_ACTION_TRIGGER
                     else irq.mask_fd if action == p.IRQ_SET_ACTION_MASK else irq.unmask_fd)
            for i, vector in enumerate(vectors):
                old = table[vector]
                table[vector] = fds[i] if fds else None
                if old is not None:
                    close_fds([old])
            log.debug("IRQ index %d vectors %d..%d: %s eventfds %s", index, start,
                      start + count - 1, action, list(fds) or "unset")
            return b""
        if data_type == p.IRQ_SET_DATA_BOOL:
            if len(payload) != p.IRQ_SET.size + count:
                raise _Refused(errno.EINVAL, f"DATA_BOOL with {len(payload) - p.IRQ_SET.size} "
                                             f"bytes for {count} vectors")
            chosen = [v for i, v in enumerate(vectors) if payload[p.IRQ_SET.size + i]]
        else:
            if len(payload) != p.IRQ_SET.size:
                raise _Refused(errno.EINVAL, "DATA_NONE with data")
            chosen = list(vectors)
        for vector in chosen:
            if action == p.IRQ_SET_ACTION_TRIGGER:
                self.trigger(index, vector)  # the client triggers the device's interrupt
            elif action == p.IRQ_SET_ACTION_MASK:
                irq.masked[vector] = True
            else:
                self._unmask(index, vector)
        return b""

    def trigger(self, index: int, vector: int = 0) -> bool:
        """Signal interrupt `vector` of IRQ `index`: write 1 to its trigger eventfd.

        Returns True if signalled; False if no eventfd is armed, or the vector is masked
        (then it is pending and fires on unmask).  INTx is AUTOMASKED (linux/vfio.h): after
        signalling it masks itself until the client unmasks it."""
        irq = self.irqs.get(index)
        if irq is None or not 0 <= vector < irq.count:
            raise ValueError(f"no interrupt vector {vector} of IRQ index {index}")
        if irq.masked[vector]:
            irq.pending[vector] = True
            return False
        fd = irq.trigger[vector]
        if fd is None:
            log.debug("IRQ %d.%d: no eventfd armed, not signalled", index, vector)
            return False
        _signal(fd)
        if _IRQS[index][0] & p.IRQ_INFO_AUTOMASKED:
            irq.masked[vector] = True
            if irq.mask_fd[vector] is not None:
                _signal(irq.mask_fd[vector])  # type: ignore[arg-type]
        return True

    # --- the device's interrupt (qbridge.guest_host.GuestBus) ----------------------------

    def deliver_msi(self) -> bool:
        """The device's MSI: its one vector's eventfd, armed by QEMU when the guest
        enabled MSI (SET_IRQS on index 1)."""
        if self.trigger(p.PCI_MSI_IRQ_INDEX):
            return True
        log.warning("MSI not delivered: QEMU armed no eventfd for it (or masked it)")
        return False

    def deliver_intx(self, asserted: bool) -> bool:
        """The INTx wire's new level: a rising edge signals the INTx eventfd (QEMU keeps
        the line asserted until the guest's EOI and the unmask); a falling edge needs no
        message, but a trigger still pending behind the mask is dropped: the level it
        stood for is gone, and an unmask must not fire an interrupt nobody raised."""
        if not asserted:
            irq = self.irqs.get(p.PCI_INTX_IRQ_INDEX)
            if irq is not None:
                irq.pending = [False] * irq.count
            return True
        if self.trigger(p.PCI_INTX_IRQ_INDEX):
            return True
        log.debug("INTx not signalled now (no eventfd armed, or masked: pending)")
        return False

    def _unmask(self, index: int, vector: int) -> None:
        irq = self.irqs[index]
        irq.masked[vector] = False
        if irq.unmask_fd[vector] is not None:
            _signal(irq.unmask_fd[vector])  # type: ignore[arg-type]
        if irq.pending[vector]:
            irq.pending[vector] = False
            self.trigger(index, vector)

    # --- REGION_READ / REGION_WRITE (vfio-user.rst, "VFIO_USER_REGION_READ", "..._WRITE")

    def _check_access(self, offset: int, region: int, count: int) -> None:
        if region == p.PCI_BAR0_REGION_INDEX:
            if count not in _BAR_SIZES:
                raise _Refused(errno.EINVAL, f"BAR0 access of {count} bytes, not 1, 2, 4 or 8")
            if offset + count > BAR0_SIZE:
                raise _Refused(errno.EINVAL, f"BAR0 access at {offset:#x}+{count} beyond its "
                                             f"{BAR0_SIZE:#x} bytes")
        elif region == p.PCI_CONFIG_REGION_INDEX:
            if count == 0 or offset + count > CONFIG_SPACE_SIZE:
                raise _Refused(errno.EINVAL, f"config access at {offset:#x}+{count} outside "
                                             f"its {CONFIG_SPACE_SIZE:#x} bytes")
        else:
            raise _Refused(errno.EINVAL, f"no accessible region {region}")

    async def _region_read(self, core: Core, msg: Message) -> bytes:
        if len(msg.payload) != REGION_ACCESS.size:
            raise _Refused(errno.EINVAL, f"payload of {len(msg.payload)} bytes, expected "
                                         f"{REGION_ACCESS.size}")
        offset, region, count = REGION_ACCESS.unpack(msg.payload)
        self._check_access(offset, region, count)
        host = core.host
        if region == p.PCI_BAR0_REGION_INDEX:
            value = await host.read(_MEM, self.bar0_base + offset, count)
            return msg.payload + value.to_bytes(count, "little")
        data = bytearray()
        for pos, size in _pieces(offset, count):
            data += (await host.cfg_read(pos, size)).to_bytes(size, "little")
        return msg.payload + bytes(data)

    async def _region_write(self, core: Core, msg: Message) -> bytes:
        payload = msg.payload
        if len(payload) < REGION_ACCESS.size:
            raise _Refused(errno.EINVAL, f"payload of {len(payload)} bytes, less than "
                                         f"{REGION_ACCESS.size}")
        offset, region, count = REGION_ACCESS.unpack_from(payload)
        if len(payload) != REGION_ACCESS.size + count:
            raise _Refused(errno.EINVAL, f"count {count} with {len(payload) - 16} data bytes")
        self._check_access(offset, region, count)
        data = payload[REGION_ACCESS.size:]
        host = core.host
        if region == p.PCI_BAR0_REGION_INDEX:
            # Posted in QEMU (No_reply set): the reply below is skipped by the dispatcher.
            await host.write(_MEM, self.bar0_base + offset, int.from_bytes(data, "little"),
                             count)
        else:
            for pos, size in _pieces(offset, count):
                await host.cfg_write(pos, int.from_bytes(data[pos - offset:pos - offset + size],
                                                         "little"), size)
            if offset < _BAR0_DW + 4 and _BAR0_DW < offset + count:
                await self._refresh_bar0(core)
        return payload[:REGION_ACCESS.size]

    async def _refresh_bar0(self, core: Core) -> None:
        """Re-read the device's own BAR0 register: the transport turns region offsets into
        the bus addresses the device decodes, so both must agree on the base."""
        self.bar0_base = await core.host.cfg_read(_BAR0_DW, 4) & BAR0_ADDRESS_MASK
        log.debug("BAR0 base %#x", self.bar0_base)

    # --- DEVICE_RESET (vfio-user.rst, "VFIO_USER_DEVICE_RESET") --------------------------

    async def _reset(self, core: Core, msg: Message) -> bytes:
        if msg.payload:
            raise _Refused(errno.EINVAL, f"payload of {len(msg.payload)} bytes, takes none")
        await core.reset()
        await self._refresh_bar0(core)
        return b""

    # --- device DMA ---------------------------------------------------------------------

    def _region_at(self, addr: int) -> DmaRegion:
        for region in self.dma:
            if region.addr <= addr < region.end:
                return region
        raise DmaError(f"DMA at {addr:#x}: no DMA_MAP window covers it")

    def _chunk(self) -> int:
        # Our DMA_READ reply must fit what we receive, and the client's max_data_xfer_size
        # bounds every count we send (vfio-user.rst, "Read and Write Operations").
        return min(self.peer_max_data_xfer, p.MAX_DATA_XFER)

    def dma_read(self, addr: int, size: int) -> bytes:
        """Read `size` bytes of client memory at DMA address `addr`: from the mapped memfd
        when the window came with one, else by DMA_READ messages (bounded by
        `message_timeout` each).  Raises DmaError outside every window or when the window
        is not readable; ProtocolError when the client does not answer properly."""
        if size < 0 or addr < 0:
            raise ValueError(f"DMA read of {size} bytes at {addr:#x}")
        out = bytearray()
        while len(out) < size:
            pos = addr + len(out)
            region = self._region_at(pos)
            if not region.flags & p.DMA_MAP_FLAG_READ:
                raise DmaError(f"DMA read at {pos:#x}: window {region.addr:#x}+"
                               f"{region.size:#x} is not readable")
            n = min(size - len(out), region.end - pos)
            if region.view is not None:
                out += region.view[pos - region.addr:pos - region.addr + n]
            else:
                for start in range(pos, pos + n, self._chunk()):
                    out += p.dma_read_message(self.sock, self._ids, start,
                                              min(self._chunk(), pos + n - start),
                                              self.message_timeout, self._queued.append)
        return bytes(out)

    def dma_write(self, addr: int, data: bytes) -> None:
        """Write `data` to client memory at DMA address `addr` (mapped memfd or DMA_WRITE
        messages, as `dma_read`).  Raises DmaError outside every window or when the window
        is not writable."""
        if addr < 0:
            raise ValueError(f"DMA write at {addr:#x}")
        done = 0
        while done < len(data):
            pos = addr + done
            region = self._region_at(pos)
            if not region.flags & p.DMA_MAP_FLAG_WRITE:
                raise DmaError(f"DMA write at {pos:#x}: window {region.addr:#x}+"
                               f"{region.size:#x} is not writable")
            n = min(len(data) - done, region.end - pos)
            if region.view is not None:
                region.view[pos - region.addr:pos - region.addr + n] = data[done:done + n]
            else:
                for start in range(pos, pos + n, self._chunk()):
                    end = min(start + self._chunk(), pos + n)
                    p.dma_write_message(self.sock, self._ids, start,
                                        bytes(data[start - addr:end - addr]),
                                        self.message_timeout, self._queued.append)
            done += n
