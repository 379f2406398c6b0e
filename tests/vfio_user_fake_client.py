"""A fake QEMU-side vfio-user client for the transport's tests.

It speaks to `VfioUserTransport` over a socketpair.  The server runs on an asyncio loop in
the test's own thread: `Harness.request()` sends one message, lets the transport handle
what arrived (`on_readable`), and returns the reply, if any.  Server-to-client DMA
requests need a client that answers while the server waits: `DmaResponder` does that from
a thread, over a dict of fake guest memory.

Messages are packed and parsed here with plain struct calls on the header layout of
vfio-user.rst ("Header"), not with the codec under test, except for framing.
"""

from __future__ import annotations

import array
import asyncio
import collections
import os
import select
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from qbridge.vfio_user.transport import VfioUserTransport

from models.contract.transaction import Host
from models.device import Device

HDR = struct.Struct("<HHIII")
REPLY = 1
NO_REPLY = 0x10
ERROR = 0x20

# Command numbers, independent of the code under test (vfio-user.rst, "Commands").
VERSION, DMA_MAP, DMA_UNMAP, GET_INFO, GET_REGION_INFO, GET_REGION_IO_FDS = 1, 2, 3, 4, 5, 6
GET_IRQ_INFO, SET_IRQS, REGION_READ, REGION_WRITE, DMA_READ, DMA_WRITE = 7, 8, 9, 10, 11, 12
DEVICE_RESET = 13

QEMU_CAPS = (b'{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,'
             b'"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}\0')


def open_fds() -> int:
    """How many fds this process has open (the leak checks compare before and after)."""
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Reply:
    msg_id: int
    cmd: int
    flags: int
    errno: int
    payload: bytes

    @property
    def error(self) -> bool:
        return bool(self.flags & ERROR)


class FakeCore:
    """Stand-in for qbridge.core.DeviceCore: host over the golden model, counts, reset."""

    def __init__(self, message_timeout: float = 2.0) -> None:
        self.device = Device()
        self.host = Host(self.device)
        self.counts: collections.Counter[str] = collections.Counter()
        self.message_timeout = message_timeout
        self.resets = 0

    async def reset(self) -> None:
        self.resets += 1
        await self.device.reset()


def pack(cmd: int, payload: bytes = b"", msg_id: int = 7, flags: int = 0,
         size: int | None = None) -> bytes:
    return HDR.pack(msg_id, cmd, HDR.size + len(payload) if size is None else size, flags,
                    0) + payload


def recv_exact(sock: socket.socket, n: int, timeout: float) -> bytes:
    buf = b""
    while len(buf) < n:
        if not select.select([sock], [], [], timeout)[0]:
            raise TimeoutError(f"fake client: {len(buf)} of {n} bytes within {timeout} s")
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"fake client: server closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def recv_reply(sock: socket.socket, timeout: float = 2.0) -> Reply:
    head = recv_exact(sock, HDR.size, timeout)
    msg_id, cmd, size, flags, err = HDR.unpack(head)
    payload = recv_exact(sock, size - HDR.size, timeout) if size > HDR.size else b""
    return Reply(msg_id, cmd, flags, err, payload)


def pending(sock: socket.socket) -> bool:
    """Whether the server sent anything not yet read."""
    return bool(select.select([sock], [], [], 0.05)[0])


class Client:
    """The client side of one connection to a vfio-user server: in this process
    (`Harness`) or another (the server CLI, the RTL backend)."""

    def __init__(self, sock: socket.socket, timeout: float = 2.0) -> None:
        self.client = sock
        self.timeout = timeout
        self._id = 0

    def send(self, cmd: int, payload: bytes = b"", fds: Sequence[int] = (), flags: int = 0,
             msg_id: int | None = None, raw: bytes | None = None) -> int:
        if msg_id is None:
            self._id = (self._id + 1) & 0xFFFF
            msg_id = self._id
        data = raw if raw is not None else pack(cmd, payload, msg_id, flags)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.client.sendmsg([data], anc)
        return msg_id

    def after_send(self) -> None:
        """Hook: an in-process server handles what arrived (`Harness`)."""

    def request(self, cmd: int, payload: bytes = b"", fds: Sequence[int] = (),
                flags: int = 0) -> Reply | None:
        msg_id = self.send(cmd, payload, fds, flags)
        self.after_send()
        if flags & NO_REPLY:
            return None
        reply = recv_reply(self.client, self.timeout)
        assert (reply.msg_id, reply.cmd) == (msg_id, cmd), "reply does not echo id and cmd"
        assert reply.flags & 0xF == REPLY
        return reply

    def version(self, minor: int = 0) -> Reply:
        reply = self.request(VERSION, struct.pack("<HH", 0, minor) + QEMU_CAPS)
        assert reply is not None and not reply.error
        return reply

    # Region access helpers (offsets relative to the region, as QEMU sends them).
    def read(self, region: int, offset: int, count: int) -> bytes:
        reply = self.request(REGION_READ, struct.pack("<QII", offset, region, count))
        assert reply is not None and not reply.error, f"read error {reply}"
        assert reply.payload[:16] == struct.pack("<QII", offset, region, count)
        assert len(reply.payload) == 16 + count
        return reply.payload[16:]

    def read_int(self, region: int, offset: int, count: int) -> int:
        return int.from_bytes(self.read(region, offset, count), "little")

    def write(self, region: int, offset: int, value: int, count: int,
              posted: bool = False) -> None:
        reply = self.request(REGION_WRITE, struct.pack("<QII", offset, region, count)
                             + value.to_bytes(count, "little"),
                             flags=NO_REPLY if posted else 0)
        if not posted:
            assert reply is not None and not reply.error, f"write error {reply}"
            assert reply.payload == struct.pack("<QII", offset, region, count)


class Harness(Client):
    """A `VfioUserTransport` on a socketpair, served on an asyncio loop in this thread."""

    def __init__(self, core: FakeCore | None = None) -> None:
        self.core = core or FakeCore()
        self.loop = asyncio.new_event_loop()
        client, self.server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        super().__init__(client)
        self.transport = VfioUserTransport(self.server)

    def close(self) -> None:
        self.transport.close()
        self.client.close()
        self.server.close()
        self.loop.close()

    def step(self) -> bool:
        """Let the transport handle what arrived; its result (False: peer closed)."""
        return self.loop.run_until_complete(
            asyncio.wait_for(self.transport.on_readable(self.core), 10))

    def after_send(self) -> None:
        self.step()


class DmaResponder(threading.Thread):
    """Answers the server's DMA_READ/DMA_WRITE from `memory` (address -> byte) on the
    client socket, until `stop()`.  `errors` makes it answer with an error reply."""

    def __init__(self, sock: socket.socket, memory: dict[int, int], errors: bool = False,
                 before_reply: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.memory = memory
        self.errors = errors
        self.before_reply = before_reply  # sent once before the first reply (a command)
        self.requests: list[tuple[int, int, int]] = []  # (cmd, addr, count)
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        assert not self.is_alive()

    def run(self) -> None:
        while not self._halt.is_set():
            if not select.select([self.sock], [], [], 0.05)[0]:
                continue
            try:
                req = recv_reply(self.sock, 2.0)
            except (EOFError, TimeoutError, OSError):
                return
            addr, count = struct.unpack_from("<QQ", req.payload)
            self.requests.append((req.cmd, addr, count))
            if self.before_reply:
                self.sock.sendall(self.before_reply)
                self.before_reply = b""
            if self.errors:
                self.sock.sendall(HDR.pack(req.msg_id, req.cmd, 16, REPLY | ERROR, 14))
                continue
            if req.cmd == DMA_READ:
                data = bytes(self.memory.get(addr + i, 0) for i in range(count))
                body = struct.pack("<QQ", addr, count) + data
            else:
                for i, byte in enumerate(req.payload[16:16 + count]):
                    self.memory[addr + i] = byte
                body = struct.pack("<QQ", addr, count)
            self.sock.sendall(HDR.pack(req.msg_id, req.cmd, 16 + len(body), REPLY, 0) + body)
