"""A fake QEMU for the bridge tests and benches: the proxy side of x-pci-proxy-dev, written from the
measured wire format (docs/measured-facts.md) with its own struct layouts, so that
a layout mistake in qbridge.proxy.protocol cannot hide behind a shared definition.

Ref: QEMU 7.2 hw/remote/proxy.c (what the proxy sends and when it waits for a reply).
"""

from __future__ import annotations

import array
import select
import socket
import struct
import time
from collections.abc import Sequence

from models.contract.regmap import BAR0_TEST_BASE

# cmd numbers of QEMU's MPQemuCmd
SYNC_SYSMEM, RET, CFGWRITE, CFGREAD, BAR_WRITE, BAR_READ, SET_IRQFD, DEVICE_RESET = range(8)

REPLY_TIMEOUT_S = 20.0  # generous: the RTL backend's first access waits for a simulator


def header(cmd: int, size: int) -> bytes:
    return struct.pack("<i", cmd) + b"\0" * 4 + struct.pack("<Q", size)


def config_payload(addr: int, val: int, length: int) -> bytes:
    return struct.pack("<IIi", addr, val, length)


def bar_payload(addr: int, val: int, size: int, memory: bool) -> bytes:
    return struct.pack("<QQI", addr, val, size) + bytes([int(memory)]) + b"\0" * 3


def sysmem_payload(regions: Sequence[tuple[int, int, int]]) -> bytes:
    regions = list(regions) + [(0, 0, 0)] * (8 - len(regions))
    return (b"".join(struct.pack("<Q", r[0]) for r in regions)
            + b"".join(struct.pack("<Q", r[1]) for r in regions)
            + b"".join(struct.pack("<q", r[2]) for r in regions))


class NoReply(AssertionError):
    pass


class FakeQemu:
    """Drives a device server over `sock` as QEMU's proxy does (one request at a time)."""

    BAR0 = BAR0_TEST_BASE

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    # -- raw messages --------------------------------------------------------------------
    def send(self, cmd: int, payload: bytes = b"", fds: Sequence[int] = (),
             size: int | None = None) -> None:
        data = header(cmd, len(payload) if size is None else size) + payload
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sent = self.sock.sendmsg([data], anc)
        assert sent == len(data), f"short send: {sent} of {len(data)} bytes"

    def reply(self, timeout: float = REPLY_TIMEOUT_S) -> int:
        """Read one RET (24 bytes), check its header, return its value."""
        buf = b""
        deadline = time.monotonic() + timeout
        while len(buf) < 24:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise NoReply(f"no complete reply within {timeout} s (got {buf!r})")
            try:
                chunk = self.sock.recv(24 - len(buf))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise NoReply(f"server closed the connection (got {buf!r})")
            buf += chunk
        cmd, size, value = struct.unpack("<i4xQQ", buf)
        assert (cmd, size) == (RET, 8), f"reply header cmd={cmd} size={size}, expected RET/8"
        return value

    def assert_no_reply(self, wait: float = 0.2) -> None:
        ready = select.select([self.sock], [], [], wait)[0]
        if ready:
            data = self.sock.recv(64, socket.MSG_PEEK)
            assert not data, f"unexpected data from the server: {data!r}"

    # -- what proxy.c sends --------------------------------------------------------------
    def cfg_read(self, addr: int, length: int = 4,
                 timeout: float = REPLY_TIMEOUT_S) -> int:
        self.send(CFGREAD, config_payload(addr, 0, length))
        return self.reply(timeout)

    def cfg_write(self, addr: int, val: int, length: int = 4) -> None:
        self.send(CFGWRITE, config_payload(addr, val, length))
        self.reply()

    def bar_read(self, addr: int, size: int = 4, memory: bool = True) -> int:
        self.send(BAR_READ, bar_payload(addr, 0, size, memory))
        return self.reply()

    def bar_write(self, addr: int, val: int, size: int = 4, memory: bool = True) -> None:
        self.send(BAR_WRITE, bar_payload(addr, val, size, memory))
        self.reply()

    def reset(self) -> None:
        self.send(DEVICE_RESET)
        self.reply()

    def sync_sysmem(self, regions: Sequence[tuple[int, int, int]], fds: Sequence[int]) -> None:
        self.send(SYNC_SYSMEM, sysmem_payload(regions), fds)

    def set_irqfd(self, irq: int, resample: int) -> None:
        self.send(SET_IRQFD, b"", (irq, resample))

    # -- sequences -----------------------------------------------------------------------
    def realize(self) -> dict[str, int]:
        """pci_proxy_dev_realize: identity reads, then BAR sizing of BARs 0..5 and 0x28
        (read, write all-ones, read, restore).  Returns what it read."""
        seen = {
            "vendor": self.cfg_read(0x00, 2),
            "device": self.cfg_read(0x02, 2),
            "class": self.cfg_read(0x0A, 2),
            "subsystem": self.cfg_read(0x2E, 2),
        }
        for off in (0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x28):
            orig = self.cfg_read(off, 4)
            self.cfg_write(off, 0xFFFFFFFF, 4)
            seen[f"size@{off:#x}"] = self.cfg_read(off, 4)
            self.cfg_write(off, orig, 4)
        return seen

    def enable(self, bar0: int = BAR0) -> None:
        """What Linux does before a driver touches BAR0: program it, set COMMAND.MEM."""
        self.cfg_write(0x10, bar0, 4)
        command = self.cfg_read(0x04, 2)
        self.cfg_write(0x04, command | 0x2, 2)
