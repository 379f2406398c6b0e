"""vfio-user input fuzzer: hostile vfio-user streams against the device server.

    python -m bench.robustness.fuzz_vfio_user [--inputs 100000] [--seed 1] [--json FILE]

Each input is one connection to a `DeviceCore` with a `VfioUserTransport`, serving ONE
long-lived golden-model `Device`: the device state carries over between connections, as
it does across QEMU reconnects, while the transport's state (version, DMA windows, IRQ
eventfds) is per connection (vfio-user.rst, "Client Disconnection"):

    probe (valid: VERSION, BAR0 and COMMAND.MEM programmed through the config region,
           RNG and ID read through BAR0, BAR0, COMMAND and the vendor/device ID read back)
    + 0..6 random valid messages (region reads and writes, posted ones too, info queries,
      SET_IRQS with eventfds, client triggers, masks, DMA_MAP with and without a memfd,
      DMA_UNMAP, DEVICE_RESET)
    + a hostile tail, often followed by more valid messages (the session must go on)

The tail is one of: random bytes; a mutated valid message (bit flips, bytes set, header
fields changed, truncated, extended, random fds); a truncated header; a msg_size over our
limit (or under the header's 16); an unknown or unsupported command; a reply, an unknown
message type or stray flag bits where a command is expected; wrong payload sizes or
argsz; bad region indices, offsets, counts; REGION_WRITE data not matching its count; bad
SET_IRQS combinations; bad DMA_MAP/DMA_UNMAP fields; fds on a message kind that takes
none; more fds than max_msg_fds; fds of the wrong kind (not an eventfd for SET_IRQS, not
mappable for DMA_MAP); a bad VERSION (first message not VERSION, major not 0, malformed
version data, a second VERSION); a peer closing mid-message; a peer stalling
mid-message; or nothing (a clean close).

The oracle is independent of `qbridge.vfio_user`: `Oracle` decodes the byte stream with
its own header and struct layouts, written again from QEMU docs/interop/vfio-user.rst, and
applies the rules of docs/bridge-protocol.md ("vfio-user": "What we implement",
"Decisions") while a shadow `models.device.Device` executes every access it deems valid.
Per input the run checks that the server
- sends exactly the replies and error replies (msg_id and command echoed, errno) the
  oracle expects, in order, with the shadow's data, and nothing for posted commands;
- ends with `ProtocolError` (one clear line) exactly when the oracle says the connection
  cannot go on, and returns normally exactly when the stream ended cleanly; any other
  exception (a traceback in the CLI) is a failure;
- logs one warning per refused message and nothing at ERROR;
- signalled each trigger eventfd exactly as often as the oracle's IRQ model says;
- never hangs (a SIGALRM watchdog per input) and leaks no fd (`/proc/self/fd`);
so every later probe proves the device state (config space, RNG sequence) is exactly the
model's.  `tests/test_robust_vfio_user_fuzz.py` runs the same engine under hypothesis.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import errno
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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from qbridge.core import DeviceCore, ProtocolError
from qbridge.vfio_user.transport import VfioUserTransport

from models.contract.regmap import BAR0_SIZE, BAR0_TEST_BASE, CONFIG_SPACE_SIZE
from models.contract.transaction import Host, Space
from models.device import Device

log = logging.getLogger("cosim.bench.fuzz_vfio_user")

# -- wire format, written again from vfio-user.rst (not imported from qbridge) -------------
HDR = struct.Struct("<HHIII")  # "Header": msg_id, command, msg_size (with header), flags, error
TYPE_MASK, COMMAND, REPLY = 0xF, 0x0, 0x1  # flags bits 0-3: the message type
NO_REPLY, ERROR = 1 << 4, 1 << 5
# "Commands"
(VERSION, DMA_MAP, DMA_UNMAP, GET_INFO, GET_REGION_INFO, GET_REGION_IO_FDS, GET_IRQ_INFO,
 SET_IRQS, REGION_READ, REGION_WRITE, DMA_READ, DMA_WRITE, DEVICE_RESET) = range(1, 14)
REGION_WRITE_MULTI, DEVICE_FEATURE, MIG_DATA_READ, MIG_DATA_WRITE = range(15, 19)
VER = struct.Struct("<HH")  # major, minor; then optional JSON version data
MAP = struct.Struct("<IIQQQ")  # argsz, flags, offset, address, size
UNMAP = struct.Struct("<IIQQ")  # argsz, flags, address, size
DEV_INFO = struct.Struct("<IIII")  # argsz, flags, num_regions, num_irqs
REG_INFO = struct.Struct("<IIIIQQ")  # argsz, flags, index, cap_offset, size, offset
IRQ_INFO = struct.Struct("<IIII")  # argsz, flags, index, count
IRQ_SET = struct.Struct("<IIIII")  # argsz, flags, index, start, count; then data
ACCESS = struct.Struct("<QII")  # offset, region, count; then data
# Bits and indexes vfio-user reuses from linux/vfio.h.
MAP_READ, MAP_WRITE = 1 << 0, 1 << 1
UNMAP_DIRTY_BITMAP, UNMAP_ALL = 1 << 0, 1 << 1
DATA_NONE, DATA_BOOL, DATA_EVENTFD = 1 << 0, 1 << 1, 1 << 2
ACT_MASK, ACT_UNMASK, ACT_TRIGGER = 1 << 3, 1 << 4, 1 << 5
IRQ_EVENTFD, IRQ_MASKABLE, IRQ_AUTOMASKED, IRQ_NORESIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
BAR0_REGION, CONFIG_REGION, NUM_REGIONS = 0, 7, 9
INTX, MSI, NUM_IRQS = 0, 1, 5

# -- what our server implements (docs/bridge-protocol.md, "vfio-user") --------------------
SERVED = frozenset({VERSION, DMA_MAP, DMA_UNMAP, GET_INFO, GET_REGION_INFO, GET_IRQ_INFO,
                    SET_IRQS, REGION_READ, REGION_WRITE, DEVICE_RESET})
TAKES_FDS = frozenset({DMA_MAP, SET_IRQS})
MAX_MSG_FDS = 8
MAX_DATA_XFER = 4096
MAX_DMA_MAPS = 1024
MAX_MSG_SIZE = HDR.size + ACCESS.size + MAX_DATA_XFER  # "refused before its payload is read"
OUR_CAPS = {"max_msg_fds": MAX_MSG_FDS, "max_data_xfer_size": MAX_DATA_XFER,
            "max_dma_maps": MAX_DMA_MAPS}
DEVICE_FLAGS = 0b11  # VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI
RW = 0b11  # VFIO_REGION_INFO_FLAG_READ | _WRITE
REGIONS = {i: (0, 0) for i in range(NUM_REGIONS)}  # index -> (flags, size); absent: size 0
REGIONS[BAR0_REGION] = (RW, BAR0_SIZE)
REGIONS[CONFIG_REGION] = (RW, CONFIG_SPACE_SIZE)
IRQS = {INTX: (IRQ_EVENTFD | IRQ_MASKABLE | IRQ_AUTOMASKED, 1),  # index -> (flags, count)
        MSI: (IRQ_EVENTFD | IRQ_NORESIZE, 1),
        2: (IRQ_EVENTFD | IRQ_NORESIZE, 0), 3: (IRQ_EVENTFD | IRQ_NORESIZE, 0),
        4: (IRQ_EVENTFD | IRQ_NORESIZE, 0)}
BAR_SIZES = (1, 2, 4, 8)

# The kinds of fd an input sends.  Every eventfd is fresh and kept open by the harness until
# the input ends, so its counter tells how often the server signalled it; a "full" one is
# blocking with its counter at the maximum (a client that never reads it: a write would
# block).  The memfd (guest RAM for DMA_MAP) and a read-only /dev/null are one each, sent
# again and again.
EVENTFD, FULL, MEMFD, RDONLY = "eventfd", "full-eventfd", "memfd", "rdonly"
FD_KINDS = (EVENTFD, FULL, MEMFD, RDONLY)
EVENTFDS = frozenset({EVENTFD, FULL})
EVENTFD_MAX = 0xFFFF_FFFF_FFFF_FFFE  # eventfd(2): the largest counter value
MEMFD_SIZE = 0x10000

STALL_TIMEOUT_S = 0.05  # "stalled" inputs: the peer stall is noticed quickly
MESSAGE_TIMEOUT_S = 2.0  # all other inputs are queued completely before serving starts
WATCHDOG_S = 5.0  # an input still being served after this is a hang

QEMU_CAPS = (b'{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,'
             b'"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}\0')
# Version data a client may send (vfio-user.rst, "Version": optional, NUL-terminated JSON).
GOOD_VERSION_DATA = (QEMU_CAPS, QEMU_CAPS, b"", b"{}\0", b'{"capabilities":{}}\0',
                     b'{"capabilities":{"max_msg_fds":1,"max_data_xfer_size":512}}',
                     b'{"capabilities":{"migration":{"pgsize":4096}},"x":[1,[2]]}\0')


@dataclass(frozen=True)
class Chunk:
    """One sendmsg: bytes and the kinds of the fds riding on it (they arrive with the
    chunk's first byte, as QEMU sends them with a message's header)."""

    data: bytes
    fds: tuple[str, ...] = ()


@dataclass
class Input:
    chunks: list[Chunk]
    category: str
    eof: bool = True  # False: the peer stalls (keeps the connection open, sends no more)


# -- message builders ---------------------------------------------------------------------
def msg(cmd: int, payload: bytes = b"", msg_id: int = 0, flags: int = COMMAND,
        size: int | None = None, err: int = 0) -> bytes:
    return HDR.pack(msg_id, cmd, HDR.size + len(payload) if size is None else size, flags,
                    err) + payload


def irq_set(flags: int, index: int, start: int, count: int, data: bytes = b"") -> bytes:
    return IRQ_SET.pack(IRQ_SET.size + len(data), flags, index, start, count) + data


class Gen:
    """Builds one input's messages.  It remembers the DMA windows it mapped, so that some
    unmaps match and some maps overlap; whether they do is the oracle's business."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.windows: list[tuple[int, int]] = []

    def m(self, cmd: int, payload: bytes = b"", flags: int = COMMAND,
          fds: Sequence[str] = ()) -> Chunk:
        # msg_ids are random: they belong to the sender and may repeat, the server echoes.
        return Chunk(msg(cmd, payload, self.rnd.getrandbits(16), flags), tuple(fds))

    def read(self, region: int, offset: int, count: int) -> Chunk:
        return self.m(REGION_READ, ACCESS.pack(offset, region, count))

    def write(self, region: int, offset: int, data: bytes, posted: bool = False) -> Chunk:
        return self.m(REGION_WRITE, ACCESS.pack(offset, region, len(data)) + data,
                      NO_REPLY if posted else COMMAND)

    def version(self) -> Chunk:
        return self.m(VERSION, VER.pack(0, self.rnd.randrange(4))
                      + self.rnd.choice(GOOD_VERSION_DATA))

    def probe(self) -> list[Chunk]:
        """VERSION, then BAR0 and COMMAND.MEM programmed as Linux does (so the RNG is
        reachable whatever the previous input did: reset, config writes), then reads that
        show the RNG sequence and the config registers that decode it."""
        r = self.rnd
        bar = r.choice([BAR0_TEST_BASE, BAR0_TEST_BASE, 0xE000_0000, 0xFFFF_F000,
                        r.getrandbits(20) << 12])
        command = 0x2 | r.choice([0, 0, 0x1, 0x4, 0x40, 0x100, 0x400])
        chunks = [self.version(),
                  self.write(CONFIG_REGION, 0x10, bar.to_bytes(4, "little")),
                  self.write(CONFIG_REGION, 0x04, command.to_bytes(2, "little")),
                  self.read(BAR0_REGION, 0x0, 4), self.read(BAR0_REGION, 0x8, 4),
                  self.read(CONFIG_REGION, 0x10, 4), self.read(CONFIG_REGION, 0x04, 2),
                  self.read(CONFIG_REGION, 0x00, 4)]
        # QEMU arms INTx at realize; arming here too makes the later triggers, masks and
        # unmasks signal something the harness can count.
        for index, chance in ((INTX, 0.5), (MSI, 0.3)):
            if r.random() < chance:
                chunks.append(self.m(SET_IRQS, irq_set(DATA_EVENTFD | ACT_TRIGGER, index, 0, 1),
                                     fds=(EVENTFD,)))
        return chunks

    def window(self) -> tuple[int, int]:
        r = self.rnd
        if self.windows and r.random() < 0.3:
            return r.choice(self.windows)
        addr = r.choice([r.randrange(32) << 12, r.randrange(32) << 12, r.randrange(1 << 48),
                         (1 << 64) - (r.randrange(1, 16) << 12)])
        return addr, min(r.choice([0x1000, 0x1000, 0x2000, 0x800, r.randrange(1, 0x8000)]),
                         (1 << 64) - addr)

    def dma_map(self, with_memfd: bool) -> Chunk:
        r = self.rnd
        addr, size = self.window()
        flags = r.choice([MAP_READ | MAP_WRITE, MAP_READ | MAP_WRITE, MAP_READ, 0])
        offset = 0
        if with_memfd:
            size = min(size, MEMFD_SIZE)
            offset = r.choice([0, r.randrange(0, MEMFD_SIZE - size + 1, 0x1000),
                               r.randrange(MEMFD_SIZE - size + 1)])
        self.windows.append((addr, size))
        return self.m(DMA_MAP, MAP.pack(MAP.size, flags, offset, addr, size),
                      fds=(MEMFD,) if with_memfd else ())

    def valid(self) -> Chunk:
        """One message a well-behaved client could send: mostly accesses that matter (RNG,
        SEED, ID, the config header), then the rest of what QEMU sends."""
        r = self.rnd
        pick = r.random()
        if pick < 0.25:
            count = r.choice([4, 4, 4, 8, 1, 2])
            offset = r.choice([0, 0, 0, 4, 8, 0xC, 0x10, 0x10, r.randrange(BAR0_SIZE)])
            return self.read(BAR0_REGION, min(offset, BAR0_SIZE - count), count)
        if pick < 0.37:
            count = r.choice([4, 4, 4, 1, 2, 8])
            offset = r.choice([4, 4, 4, 0, 8, r.randrange(BAR0_SIZE)])
            value = r.getrandbits(8 * count) if r.random() < 0.5 else r.randrange(100)
            return self.write(BAR0_REGION, min(offset, BAR0_SIZE - count),
                              value.to_bytes(count, "little"), posted=r.random() < 0.8)
        if pick < 0.5:
            offset = r.randrange(0x40) if r.random() < 0.8 else r.randrange(CONFIG_SPACE_SIZE)
            count = r.choice([1, 2, 4, 4, r.randint(1, 16), CONFIG_SPACE_SIZE - offset])
            return self.read(CONFIG_REGION, offset, min(count, CONFIG_SPACE_SIZE - offset))
        if pick < 0.6:
            offset = r.randrange(0x40) if r.random() < 0.9 else r.randrange(CONFIG_SPACE_SIZE)
            if 0x02 <= offset <= 0x13 and r.random() < 0.7:
                offset += 0x20  # keep BAR0 / COMMAND mostly intact so the RNG stays reachable
            count = min(r.choice([1, 2, 4, r.randint(1, 8)]), CONFIG_SPACE_SIZE - offset)
            return self.write(CONFIG_REGION, offset, r.randbytes(count),
                              posted=r.random() < 0.1)
        if pick < 0.68:
            extra = r.choice([0, 0, 0, 16, 1000])  # argsz: the most reply the client takes
            match r.randrange(3):
                case 0:
                    return self.m(GET_INFO, DEV_INFO.pack(DEV_INFO.size + extra, 0, 0, 0))
                case 1:
                    return self.m(GET_REGION_INFO, REG_INFO.pack(
                        REG_INFO.size + extra, 0, r.randrange(NUM_REGIONS), 0, 0, 0))
                case _:
                    return self.m(GET_IRQ_INFO, IRQ_INFO.pack(IRQ_INFO.size + extra, 0,
                                                              r.randrange(NUM_IRQS), 0))
        if pick < 0.82:
            return self.irq()
        if pick < 0.9:
            return self.dma_map(with_memfd=r.random() < 0.5)
        if pick < 0.97:
            if self.windows and r.random() < 0.7:
                addr, size = self.windows.pop(r.randrange(len(self.windows)))
                return self.m(DMA_UNMAP, UNMAP.pack(UNMAP.size, 0, addr, size))
            self.windows.clear()
            return self.m(DMA_UNMAP, UNMAP.pack(UNMAP.size, UNMAP_ALL, 0, 0))
        return self.m(DEVICE_RESET)

    def irq(self) -> Chunk:
        """A valid SET_IRQS, as QEMU sends them (arm, disable) and as a client may (trigger,
        mask and unmask INTx, the maskable index)."""
        r = self.rnd
        index = r.choice([INTX, INTX, MSI])
        match r.randrange(10):
            case 0 | 1:
                return self.m(SET_IRQS, irq_set(DATA_EVENTFD | ACT_TRIGGER, index, 0, 1),
                              fds=(FULL if r.random() < 0.1 else EVENTFD,))
            case 2 | 8 | 9:
                return self.m(SET_IRQS, irq_set(DATA_NONE | ACT_TRIGGER, index, 0, 1))
            case 3:
                return self.m(SET_IRQS, irq_set(DATA_BOOL | ACT_TRIGGER, index, 0, 1,
                                                bytes([r.choice([0, 1, 0xFF])])))
            case 4:
                action = r.choice([ACT_MASK, ACT_UNMASK])
                if r.random() < 0.5:
                    return self.m(SET_IRQS, irq_set(DATA_NONE | action, INTX, 0, 1))
                return self.m(SET_IRQS, irq_set(DATA_BOOL | action, INTX, 0, 1,
                                                bytes([r.choice([0, 1])])))
            case 5:
                return self.m(SET_IRQS, irq_set(DATA_NONE | ACT_TRIGGER, index, 0, 0))
            case 6:
                return self.m(SET_IRQS, irq_set(DATA_EVENTFD | ACT_TRIGGER, index, 0, 1))
            case _:
                action = r.choice([ACT_MASK, ACT_UNMASK])
                return self.m(SET_IRQS, irq_set(DATA_EVENTFD | action, INTX, 0, 1),
                              fds=(EVENTFD,))

    def some_fds(self, most: int = 3) -> tuple[str, ...]:
        return tuple(self.rnd.choice(FD_KINDS) for _ in range(self.rnd.randint(0, most)))


def _mutate(rnd: random.Random, chunk: Chunk) -> Chunk:
    data = bytearray(chunk.data)
    for _ in range(rnd.randint(1, 4)):
        how = rnd.randrange(7)
        if how == 0 and data:
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        elif how == 1 and data:
            data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        elif how == 2:
            del data[rnd.randrange(len(data) + 1):]
        elif how == 3:
            data += rnd.randbytes(rnd.randint(1, 24))
        elif how == 4 and len(data) >= HDR.size:  # a header field: cmd, msg_size, flags
            field_at, width = rnd.choice([(2, 2), (4, 4), (4, 4), (8, 4), (12, 4)])
            value = int.from_bytes(data[field_at:field_at + width], "little")
            value = rnd.choice([value + rnd.randint(-4, 4), value ^ (1 << rnd.randrange(
                8 * width)), rnd.getrandbits(8 * width)]) % (1 << 8 * width)
            data[field_at:field_at + width] = value.to_bytes(width, "little")
        elif how == 5 and len(data) > HDR.size:  # payload bytes only: the framing survives
            del data[rnd.randrange(HDR.size, len(data)):]
            data[4:8] = len(data).to_bytes(4, "little")
        elif how == 6:
            extra = rnd.randbytes(rnd.randint(1, 24))
            data += extra
            if len(data) >= HDR.size:
                data[4:8] = len(data).to_bytes(4, "little")
    fds = rnd.choice([chunk.fds, chunk.fds, (), (EVENTFD,), (FULL,), (MEMFD,), (RDONLY,),
                      (EVENTFD, EVENTFD)])
    return Chunk(bytes(data), fds if data else ())


CATEGORIES = ("random-bytes", "mutated", "truncated-header", "bad-msg-size", "unknown-cmd",
              "reply-or-flags", "bad-size", "bad-region", "write-length", "bad-irqs",
              "bad-dma", "fds-on-none", "too-many-fds", "wrong-fd-kind", "bad-version",
              "closed-mid-message", "clean-close", "stalled")
# Tails after which the session should go on: valid messages often follow them.
_GO_ON = frozenset({"random-bytes", "mutated", "unknown-cmd", "reply-or-flags", "bad-size",
                    "bad-region", "write-length", "bad-irqs", "bad-dma", "fds-on-none",
                    "too-many-fds", "wrong-fd-kind", "bad-version"})


def _posted(rnd: random.Random) -> int:
    """Most bad commands want a reply; some are posted (No_reply: no error reply either)."""
    return NO_REPLY if rnd.random() < 0.15 else COMMAND


def _tail(g: Gen, category: str) -> list[Chunk]:
    r = g.rnd
    match category:
        case "random-bytes":
            return [Chunk(r.randbytes(r.randint(1, 300)), g.some_fds())]
        case "mutated":
            return [_mutate(r, g.valid() if r.random() < 0.9 else g.version())]
        case "truncated-header":
            return [Chunk(g.valid().data[:r.randint(1, HDR.size - 1)])]
        case "bad-msg-size":
            if r.random() < 0.2:
                size = r.randrange(HDR.size)
            else:
                size = r.choice([MAX_MSG_SIZE + 1, MAX_MSG_SIZE + 16, 1 << 16, 2**32 - 1,
                                 r.randint(MAX_MSG_SIZE + 1, 2**32 - 1)])
            flags = r.choice([COMMAND, COMMAND, NO_REPLY, REPLY, r.getrandbits(32)])
            return [Chunk(msg(r.choice([r.randint(1, 18), r.getrandbits(16)]),
                              r.randbytes(r.randint(0, 64)), r.getrandbits(16), flags, size),
                          g.some_fds(2))]
        case "unknown-cmd":
            cmd = r.choice([0, GET_REGION_IO_FDS, DMA_READ, DMA_WRITE, 14, REGION_WRITE_MULTI,
                            DEVICE_FEATURE, MIG_DATA_READ, MIG_DATA_WRITE, 19, 0xFFFF,
                            r.randint(19, 0xFFFF)])
            return [g.m(cmd, r.randbytes(r.choice([0, 8, 16, 24, r.randint(0, 64)])),
                        _posted(r), g.some_fds(1) if r.random() < 0.2 else ())]
        case "reply-or-flags":
            good = g.valid()
            flags = r.choice([REPLY, REPLY | NO_REPLY, REPLY | ERROR, r.randint(2, 15),
                              ERROR, 1 << r.randrange(6, 32), r.getrandbits(32)])
            data = bytearray(good.data)
            data[8:12] = flags.to_bytes(4, "little")
            if r.random() < 0.3:
                data[12:16] = r.getrandbits(32).to_bytes(4, "little")  # reserved in a command
            return [Chunk(bytes(data), good.fds)]
        case "bad-size":
            return [_bad_size(g)]
        case "bad-region":
            region = r.choice([BAR0_REGION, CONFIG_REGION, r.randint(1, 6), 8, 9,
                               r.getrandbits(32)])
            offset = r.choice([0, 4, BAR0_SIZE - 2, CONFIG_SPACE_SIZE - 1, CONFIG_SPACE_SIZE,
                               BAR0_SIZE, 2**64 - 1, 2**63, r.getrandbits(64)])
            count = r.choice([0, 1, 3, 4, 5, 7, 8, 9, 16, 256, 4096, r.randrange(2**32)])
            if r.random() < 0.5:
                return [g.m(REGION_READ, ACCESS.pack(offset, region, count), _posted(r))]
            return [g.m(REGION_WRITE, ACCESS.pack(offset, region, count)
                        + r.randbytes(min(count, MAX_DATA_XFER)), _posted(r))]
        case "write-length":
            region = r.choice([BAR0_REGION, CONFIG_REGION])
            count = r.choice([1, 2, 4, 8])
            data = r.randbytes(r.choice([0, count - 1, count + 1, count * 2, 100]))
            return [g.m(REGION_WRITE, ACCESS.pack(r.choice([0, 4, 0x3C]), region, count)
                        + data, _posted(r))]
        case "bad-irqs":
            return [_bad_irqs(g)]
        case "bad-dma":
            return _bad_dma(g)
        case "fds-on-none":
            while True:
                good = g.valid()
                if not good.fds and HDR.unpack_from(good.data)[1] not in TAKES_FDS:
                    break
            fds = tuple(r.choice(FD_KINDS) for _ in range(r.randint(1, 3)))
            return [Chunk(good.data, fds)]
        case "too-many-fds":
            good = r.choice([g.dma_map(with_memfd=True), g.irq(), g.valid()])
            n = r.choice([MAX_MSG_FDS + 1, r.randint(MAX_MSG_FDS + 1, 40)])
            return [Chunk(good.data, tuple(r.choice(FD_KINDS) for _ in range(n)))]
        case "wrong-fd-kind":
            if r.random() < 0.5:  # an fd that cannot be mmap-ed
                return [Chunk(g.dma_map(with_memfd=False).data, (r.choice([EVENTFD, RDONLY]),))]
            index = r.choice([INTX, MSI])
            return [g.m(SET_IRQS, irq_set(DATA_EVENTFD | ACT_TRIGGER, index, 0, 1),
                        fds=(r.choice([MEMFD, RDONLY]),)),
                    g.m(SET_IRQS, irq_set(DATA_NONE | ACT_TRIGGER, index, 0, 1))]
        case "bad-version":
            return [_bad_version(g)]
        case "closed-mid-message":
            good = r.choice([g.read(CONFIG_REGION, 0, 4), g.write(BAR0_REGION, 4, b"\5\0\0\0"),
                             g.dma_map(with_memfd=True), g.irq()])
            return [Chunk(good.data[:r.randint(HDR.size, len(good.data) - 1)], good.fds)]
        case "clean-close":
            return []
        case "stalled":
            good = g.read(BAR0_REGION, 0, 4)
            return [Chunk(good.data[:r.randint(1, len(good.data) - 1)])]
        case _:
            raise ValueError(f"unknown fuzz category {category!r}")


def _bad_size(g: Gen) -> Chunk:
    """A payload not the command's size, or an argsz below its struct (or not equal,
    where the spec defines argsz as the request's size: DMA_MAP, SET_IRQS)."""
    r = g.rnd
    cmd, struct_ = r.choice([(GET_INFO, DEV_INFO), (GET_REGION_INFO, REG_INFO),
                             (GET_IRQ_INFO, IRQ_INFO), (DMA_MAP, MAP), (DMA_UNMAP, UNMAP),
                             (SET_IRQS, IRQ_SET), (REGION_READ, ACCESS), (DEVICE_RESET, None)])
    if struct_ is None:
        return g.m(cmd, r.randbytes(r.randint(1, 40)), _posted(r))
    if r.random() < 0.5:
        size = r.choice([s for s in range(0, 48) if s != struct_.size])
        return g.m(cmd, r.randbytes(size), _posted(r))
    if cmd == SET_IRQS:
        argsz = r.choice([0, 16, 19, 21, 24, r.getrandbits(32)])
        flags = r.choice([DATA_NONE | ACT_TRIGGER, DATA_EVENTFD | ACT_TRIGGER])
        return g.m(cmd, IRQ_SET.pack(argsz, flags, INTX, 0, 1), _posted(r))
    argsz = r.choice([0, 4, struct_.size - 1, r.randrange(struct_.size)])
    if cmd == DMA_MAP:
        argsz = r.choice([argsz, struct_.size + 1, 64, r.getrandbits(32)])
    fields = [argsz] + [0] * (len(struct_.format) - 2)
    if cmd == DMA_MAP:
        fields = [argsz, MAP_READ, 0, 0x1000, 0x1000]
    elif cmd == REGION_READ:
        return g.m(cmd, ACCESS.pack(0, CONFIG_REGION, 4) + r.randbytes(r.randint(1, 8)),
                   _posted(r))
    return g.m(cmd, struct_.pack(*fields), _posted(r))


def _bad_irqs(g: Gen) -> Chunk:
    r = g.rnd
    ev = DATA_EVENTFD | ACT_TRIGGER
    payload, fds = r.choice([
        (irq_set(ev, r.choice([5, 6, r.getrandbits(32)]), 0, 1), (EVENTFD,)),  # no index
        (irq_set(ev, INTX, 0, 2), (EVENTFD, EVENTFD)),  # INTx has one vector
        (irq_set(ev, INTX, 1, 1), (EVENTFD,)),
        (irq_set(ev, r.choice([2, 3, 4]), 0, 1), (EVENTFD,)),  # MSI-X, ERR, REQ: none
        (irq_set(ev, MSI, 2**32 - 1, 1), ()),  # start + count wraps a u32
        (irq_set(ev | DATA_BOOL, INTX, 0, 1), (EVENTFD,)),  # two data types
        (irq_set(DATA_NONE | DATA_BOOL | ACT_TRIGGER, INTX, 0, 1, b"\1"), ()),
        (irq_set(DATA_EVENTFD | ACT_MASK | ACT_UNMASK, INTX, 0, 1), (EVENTFD,)),  # two actions
        (irq_set(DATA_NONE, INTX, 0, 1), ()),  # no action
        (irq_set(ACT_TRIGGER, INTX, 0, 1), ()),  # no data type
        (irq_set(DATA_NONE | ACT_TRIGGER, INTX, 0, 1), (EVENTFD,)),  # fds, not DATA_EVENTFD
        (irq_set(DATA_BOOL | ACT_UNMASK, INTX, 0, 1, b"\1"), (EVENTFD,)),
        (irq_set(DATA_NONE | ACT_MASK, MSI, 0, 1), ()),  # MSI is not maskable
        (irq_set(DATA_EVENTFD | ACT_UNMASK, MSI, 0, 1), (EVENTFD,)),
        (irq_set(DATA_NONE | ACT_MASK, INTX, 0, 0), ()),  # count 0: only disable
        (irq_set(DATA_BOOL | ACT_TRIGGER, INTX, 0, 0), ()),
        (irq_set(DATA_NONE | ACT_TRIGGER, MSI, 1, 0), ()),  # disable with a start
        (irq_set(DATA_NONE | ACT_TRIGGER, INTX, 0, 0, b"\1"), ()),  # disable with data
        (irq_set(DATA_NONE | ACT_TRIGGER, INTX, 0, 1, b"\1"), ()),  # DATA_NONE with data
        (irq_set(DATA_BOOL | ACT_TRIGGER, MSI, 0, 1), ()),  # bools missing
        (irq_set(DATA_BOOL | ACT_MASK, INTX, 0, 1, b"\1\1"), ()),  # a bool too many
        (irq_set(ev, MSI, 0, 1, b"\0\0\0\0"), (EVENTFD,)),  # DATA_EVENTFD with data
        (irq_set(ev, MSI, 0, 1), (EVENTFD, EVENTFD)),  # fds not one per vector
        (irq_set(ev | 1 << r.randrange(6, 32), INTX, 0, 1), (EVENTFD,)),  # unknown flag bit
    ])
    return g.m(SET_IRQS, payload, _posted(r), fds)


def _bad_dma(g: Gen) -> list[Chunk]:
    r = g.rnd
    mapped = g.dma_map(with_memfd=r.random() < 0.3)
    addr, size = g.windows[-1]
    kind = r.randrange(12)
    if kind == 0:
        return [mapped, g.m(DMA_MAP, mapped.data[HDR.size:], _posted(r))]  # the same again
    if kind == 1:  # overlapping by one byte on either side
        other = r.choice([(addr + size - 1, 0x1000), (max(addr - 0xFFF, 0), 0x1000)])
        return [mapped, g.m(DMA_MAP, MAP.pack(MAP.size, 3, 0, *other), _posted(r))]
    if kind == 2:
        bad = MAP.pack(MAP.size, r.choice([4, 8, 1 << r.randrange(2, 32)]) | 3, 0, 0x9000,
                       0x1000)
    elif kind == 3:
        bad = MAP.pack(MAP.size, 3, 0, r.choice([0x9000, 2**64 - 0x1000]),
                       r.choice([0, 0x2000, 2**64 - 1]))  # empty or wrapping
    elif kind == 4:
        return [g.m(DMA_MAP, MAP.pack(MAP.size, 3, 0, 0x9000, 0x1000), _posted(r),
                    (MEMFD, MEMFD))]  # two fds for one window
    elif kind == 5:  # a memfd window past the file's end (cannot be mapped)
        offset = r.choice([MEMFD_SIZE, MEMFD_SIZE - 0x800, r.getrandbits(64)])
        return [g.m(DMA_MAP, MAP.pack(MAP.size, 3, offset, 0x9000, 0x1000), _posted(r),
                    (MEMFD,))]
    elif kind == 6:
        bad = UNMAP.pack(UNMAP.size, 0, addr, max(size - 1, 1))  # not the exact window
        return [mapped, g.m(DMA_UNMAP, bad, _posted(r))]
    elif kind == 7:
        return [mapped, g.m(DMA_UNMAP, UNMAP.pack(UNMAP.size, r.choice(
            [UNMAP_DIRTY_BITMAP, UNMAP_DIRTY_BITMAP | UNMAP_ALL]), addr, size), _posted(r))]
    elif kind == 8:
        return [mapped, g.m(DMA_UNMAP, UNMAP.pack(UNMAP.size, r.choice(
            [4, 8, 1 << r.randrange(2, 32)]), addr, size), _posted(r))]
    elif kind == 9:  # unmap-all with a range
        return [mapped, g.m(DMA_UNMAP, UNMAP.pack(UNMAP.size, UNMAP_ALL, addr, size),
                            _posted(r))]
    elif kind == 10:
        return [mapped, g.m(DMA_UNMAP, UNMAP.pack(UNMAP.size, 0, (addr + 0x100000) % 2**64, size),
                            _posted(r))]
    else:
        return [mapped, g.m(DMA_UNMAP, UNMAP.pack(UNMAP.size, 0, addr, size)),
                g.m(DMA_UNMAP, UNMAP.pack(UNMAP.size, 0, addr, size), _posted(r))]  # twice
    return [g.m(DMA_MAP, bad, _posted(r))]


def _bad_version(g: Gen) -> Chunk:
    """A VERSION (or its absence) that must end the session, or a second VERSION."""
    r = g.rnd
    kind = r.randrange(6)
    if kind == 0:  # something else first (the probe's VERSION is replaced by this)
        return r.choice([g.valid(), g.read(CONFIG_REGION, 0, 4), g.m(DEVICE_RESET)])
    if kind == 1:
        return g.m(VERSION, VER.pack(r.randint(1, 0xFFFF), 0) + r.choice(GOOD_VERSION_DATA))
    if kind == 2:
        return g.m(VERSION, r.randbytes(r.randint(0, 3)))
    if kind == 3:
        data = r.choice([
            b"{not json\0", b"[1]\0", b'"caps"\0', b"{}\0{}\0", b"\xff\xfe\0",
            b'{"capabilities":[]}\0', b'{"capabilities":{"max_msg_fds":-1}}\0',
            b'{"capabilities":{"max_msg_fds":1.0}}\0',
            b'{"capabilities":{"max_data_xfer_size":0}}\0',
            b'{"capabilities":{"max_data_xfer_size":true}}\0',
            b'{"capabilities":{"max_data_xfer_size":"big"}}\0',
            # Nesting: shallow is valid JSON (unknown capabilities are ignored); deep is
            # beyond any parser's recursion (kept far from CPython's limit of 1000 so the
            # oracle and the server agree whatever their own stack depth).
            b'{"capabilities":{"x":' + b"[" * r.randint(1, 200) + b"}}\0",  # unbalanced
            b'{"capabilities":{"x":' + b"[" * (n := r.randint(1, 200)) + b"]" * n + b"}}\0",
            b"[" * r.randint(1500, 4000) + b"\0",
            b'{"a":[' * r.randint(600, 680) + b"\0",
        ])
        return g.m(VERSION, VER.pack(0, r.randrange(4)) + data, _posted(r))
    if kind == 4:  # random version data, mostly not JSON
        return g.m(VERSION, VER.pack(0, 0) + r.randbytes(r.randint(1, 64)))
    return g.version()  # a second VERSION (the probe's stays first)


def make_input(rnd: random.Random, category: str | None = None,
               valid: int | None = None) -> Input:
    """One input of `category` (random if None) with `valid` random valid messages between
    probe and tail (random 0..6 if None)."""
    if category is None:
        # Stalls cost STALL_TIMEOUT_S each: rare.
        category = "stalled" if rnd.random() < 0.002 else rnd.choice(CATEGORIES[:-1])
    g = Gen(rnd)
    chunks = g.probe()
    chunks += [g.valid() for _ in range(rnd.randint(0, 6) if valid is None else valid)]
    tail = _tail(g, category)
    if category == "bad-version" and _replaces_version(tail[0]):
        chunks[0] = tail[0]
        tail = tail[1:]
    chunks += tail
    if category in _GO_ON and rnd.random() < 0.6:
        chunks += [g.valid() for _ in range(rnd.randint(1, 2))]
    return Input(chunks, category, eof=category != "stalled")


def _replaces_version(chunk: Chunk) -> bool:
    """A bad-version tail takes the probe's VERSION's place unless it is a (good) second
    VERSION; the generator marks the latter by its version data being a good one."""
    if len(chunk.data) < HDR.size:
        return True
    cmd = HDR.unpack_from(chunk.data)[1]
    if cmd != VERSION:
        return True
    body = chunk.data[HDR.size:]
    return not (len(body) >= VER.size and VER.unpack_from(body)[0] == 0
                and body[VER.size:] in GOOD_VERSION_DATA)


# -- the independent oracle ---------------------------------------------------------------
@dataclass
class Expected:
    """What the server must do with one input."""

    # (msg_id, cmd, flags, errno, payload); payload None: a VERSION reply, checked by meaning
    replies: list[tuple[int, int, int, int, bytes | None]] = field(default_factory=list)
    end: str | None = None  # why the server must end with ProtocolError (None: clean close)
    warnings: int = 0  # refused messages: one warning line each
    messages: int = 0  # whole messages the server must have read
    signals: Counter[int] = field(default_factory=Counter)  # eventfd number -> signals
    unchecked: set[int] = field(default_factory=set)  # mask/unmask eventfds (not specified)


@dataclass
class _Irq:
    """The oracle's view of one IRQ index: per vector the armed trigger eventfd (its number
    in the input), masked, pending."""

    count: int
    trigger: list[int | None] = field(default_factory=list)
    masked: list[bool] = field(default_factory=list)
    pending: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.trigger = [None] * self.count
        self.masked = [False] * self.count
        self.pending = [False] * self.count


class _Fatal(Exception):
    """The oracle's verdict that the connection ends (after an error reply `err`)."""

    def __init__(self, err: int, reason: str) -> None:
        super().__init__(reason)
        self.err = err


def version_data_error(payload: bytes) -> str | None:
    """Why a VERSION payload is malformed (None: it is fine).  vfio-user.rst, "Version":
    major, minor, then optional UTF-8 JSON (NUL-terminated) with an optional
    "capabilities" object; our decisions: empty or blank data is no data, and
    max_msg_fds / max_data_xfer_size, when given, are integers >= 0 / >= 1."""
    if len(payload) < VER.size:
        return "shorter than major and minor"
    data = payload[VER.size:]
    if data.endswith(b"\0"):
        data = data[:-1]
    if b"\0" in data:
        return "a NUL before the end"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    if not data.strip(b" \t\n\r\v\f"):
        return None  # blank (ASCII white space only): no version data
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than parseable
        return "not JSON"
    if not isinstance(doc, dict):
        return "not a JSON object"
    caps = doc.get("capabilities", {})
    if not isinstance(caps, dict):
        return "capabilities not an object"
    for name, least in (("max_msg_fds", 0), ("max_data_xfer_size", 1)):
        value = caps.get(name, least)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            return f"{name} {value!r}"
    return None


class Oracle:
    """Decodes one input's byte stream as the server must, executing the valid accesses on
    the shadow device; `run` returns what the server must have done."""

    def __init__(self, shadow: Device, host: Host, fd_kinds: Sequence[str]) -> None:
        self.shadow = shadow
        self.host = host
        self.kinds = fd_kinds
        self.x = Expected()
        self.versioned = False
        self.windows: list[tuple[int, int]] = []
        self.irqs = {i: _Irq(n) for i, (_, n) in IRQS.items()}

    async def run(self, chunks: Sequence[Chunk], eof: bool = True) -> Expected:
        stream = b"".join(c.data for c in chunks)
        fds_at: dict[int, list[int]] = {}  # stream position -> the fd numbers sent there
        pos = n = 0
        for c in chunks:
            if c.fds:
                fds_at[pos] = list(range(n, n + len(c.fds)))
                n += len(c.fds)
            pos += len(c.data)
        pos = 0
        x = self.x
        while True:
            rest = len(stream) - pos
            if rest == 0:
                if not eof:
                    raise ValueError("an input must not stall between messages: an idle "
                                     "client is waited for")
                return x
            if rest < HDR.size:
                x.end = "truncated header"
                return x
            msg_id, cmd, size, flags, _ = HDR.unpack_from(stream, pos)
            if size < HDR.size:
                x.end = "msg_size smaller than the header"
                return x
            if size > MAX_MSG_SIZE:
                # Refused before its payload is read: said (E2BIG) if a reply is wanted.
                if flags & TYPE_MASK == COMMAND and not flags & NO_REPLY:
                    x.replies.append((msg_id, cmd, REPLY | ERROR, errno.E2BIG, b""))
                x.end = "msg_size over our limit"
                return x
            if rest < size:
                x.end = "peer closed or stalled mid-message"
                return x
            fds = [f for p, numbers in fds_at.items() if pos <= p < pos + size
                   for f in numbers]
            x.messages += 1
            if not await self._message(msg_id, cmd, flags, stream[pos + HDR.size:pos + size],
                                       fds):
                return x
            pos += size

    def _refuse(self, msg_id: int, cmd: int, flags: int, err: int) -> None:
        self.x.warnings += 1
        if not flags & NO_REPLY:
            self.x.replies.append((msg_id, cmd, REPLY | ERROR, err, b""))

    async def _message(self, msg_id: int, cmd: int, flags: int, payload: bytes,
                       fds: list[int]) -> bool:
        """Handle one whole message; False when the connection must end."""
        kind = flags & TYPE_MASK
        if kind == REPLY:  # we never sent a command: nothing may be answered
            self.x.end = "unsolicited reply"
            return False
        if kind != COMMAND:
            self._refuse(msg_id, cmd, flags, errno.EINVAL)
            return True
        if not self.versioned and cmd != VERSION:
            self._refuse(msg_id, cmd, flags, errno.EINVAL)
            self.x.end = "a command before VERSION"
            return False
        if cmd not in SERVED:
            self._refuse(msg_id, cmd, flags, errno.ENOTSUP)
            return True
        if len(fds) > MAX_MSG_FDS or fds and cmd not in TAKES_FDS:
            self._refuse(msg_id, cmd, flags, errno.EINVAL)
            return True
        try:
            result = await self._HANDLERS[cmd](self, payload, fds)
        except _Fatal as exc:
            self._refuse(msg_id, cmd, flags, exc.err)
            self.x.end = str(exc)
            return False
        if isinstance(result, int):
            self._refuse(msg_id, cmd, flags, result)
        elif not flags & NO_REPLY:
            self.x.replies.append((msg_id, cmd, REPLY, 0, None if cmd == VERSION else result))
        return True

    # Each handler returns the reply payload, or the errno of an error reply.
    async def _version(self, p: bytes, fds: list[int]) -> bytes | int:
        if self.versioned:
            return errno.EINVAL  # a second VERSION: refused, the session goes on
        why = version_data_error(p)
        if why is not None:
            raise _Fatal(errno.EINVAL, f"malformed VERSION: {why}")
        if VER.unpack_from(p)[0] != 0:
            raise _Fatal(errno.ENOTSUP, "VERSION major not 0")  # "closes the connection"
        self.versioned = True
        return b""

    async def _dma_map(self, p: bytes, fds: list[int]) -> bytes | int:
        if len(p) != MAP.size:
            return errno.EINVAL
        argsz, flags, offset, addr, size = MAP.unpack(p)
        if argsz != MAP.size or flags & ~(MAP_READ | MAP_WRITE):
            return errno.EINVAL
        if not size or addr + size > 1 << 64 or len(fds) > 1:
            return errno.EINVAL
        if any(addr < a + s and a < addr + size for a, s in self.windows):
            return errno.EEXIST  # "A command to map over an existing region must be failed"
        # An fd must be mmap-able over the whole window: the memfd, within its size.
        if fds and (self.kinds[fds[0]] != MEMFD or offset + size > MEMFD_SIZE):
            return errno.EINVAL
        self.windows.append((addr, size))
        return b""

    async def _dma_unmap(self, p: bytes, fds: list[int]) -> bytes | int:
        if len(p) != UNMAP.size:
            return errno.EINVAL
        argsz, flags, addr, size = UNMAP.unpack(p)
        if argsz < UNMAP.size:
            return errno.EINVAL  # argsz: the most reply the client takes (the entry)
        if flags & UNMAP_DIRTY_BITMAP:
            return errno.ENOTSUP
        if flags & ~UNMAP_ALL:
            return errno.EINVAL
        if flags & UNMAP_ALL:
            if addr or size:
                return errno.EINVAL
            self.windows.clear()
            return p
        if (addr, size) not in self.windows:  # "must match exactly a previous mapping"
            return errno.EINVAL
        self.windows.remove((addr, size))
        return p  # "The server responds with the original DMA entry"

    async def _get_info(self, p: bytes, fds: list[int]) -> bytes | int:
        if len(p) != DEV_INFO.size or DEV_INFO.unpack(p)[0] < DEV_INFO.size:
            return errno.EINVAL
        return DEV_INFO.pack(DEV_INFO.size, DEVICE_FLAGS, NUM_REGIONS, NUM_IRQS)

    async def _get_region_info(self, p: bytes, fds: list[int]) -> bytes | int:
        if len(p) != REG_INFO.size:
            return errno.EINVAL
        argsz, _, index, _, _, _ = REG_INFO.unpack(p)
        if argsz < REG_INFO.size or index not in REGIONS:
            return errno.EINVAL
        flags, size = REGIONS[index]
        return REG_INFO.pack(REG_INFO.size, flags, index, 0, size, 0)

    async def _get_irq_info(self, p: bytes, fds: list[int]) -> bytes | int:
        if len(p) != IRQ_INFO.size:
            return errno.EINVAL
        argsz, _, index, _ = IRQ_INFO.unpack(p)
        if argsz < IRQ_INFO.size or index not in IRQS:
            return errno.EINVAL
        flags, count = IRQS[index]
        return IRQ_INFO.pack(IRQ_INFO.size, flags, index, count)

    async def _set_irqs(self, p: bytes, fds: list[int]) -> bytes | int:
        # Every refusal here is EINVAL, so the order of the checks cannot matter.
        if len(p) < IRQ_SET.size:
            return errno.EINVAL
        argsz, flags, index, start, count = IRQ_SET.unpack_from(p)
        data_type, action = flags & 0x7, flags & 0x38
        if argsz != len(p) or flags & ~0x3F:  # argsz: "including any data"
            return errno.EINVAL
        if data_type.bit_count() != 1 or action.bit_count() != 1:  # "mutually exclusive"
            return errno.EINVAL
        irq = self.irqs.get(index)
        if irq is None or fds and data_type != DATA_EVENTFD:
            return errno.EINVAL
        data = p[IRQ_SET.size:]
        if count == 0:  # "a count (and start) of 0, with DATA_NONE disables all"
            if data_type != DATA_NONE or action != ACT_TRIGGER or start or data:
                return errno.EINVAL
            self.irqs[index] = _Irq(irq.count)
            return b""
        if start + count > irq.count:
            return errno.EINVAL
        if action != ACT_TRIGGER and not IRQS[index][0] & IRQ_MASKABLE:
            return errno.EINVAL
        vectors = range(start, start + count)
        if data_type == DATA_EVENTFD:
            # One eventfd per vector, or none (de-assign); each must BE an eventfd, as the
            # kernel's VFIO_DEVICE_SET_IRQS insists (eventfd_ctx_fdget).
            if data or len(fds) not in (0, count) or any(self.kinds[f] not in EVENTFDS
                                                         for f in fds):
                return errno.EINVAL
            if action == ACT_TRIGGER:
                for i, vector in enumerate(vectors):
                    irq.trigger[vector] = fds[i] if fds else None
            else:
                self.x.unchecked.update(fds)
            return b""
        if data_type == DATA_BOOL:
            if len(data) != count:
                return errno.EINVAL
            chosen = [v for i, v in enumerate(vectors) if data[i]]
        else:
            if data:
                return errno.EINVAL
            chosen = list(vectors)
        for vector in chosen:
            if action == ACT_TRIGGER:
                self._trigger(index, vector)
            elif action == ACT_MASK:
                irq.masked[vector] = True
            else:
                irq.masked[vector] = False
                if irq.pending[vector]:
                    irq.pending[vector] = False
                    self._trigger(index, vector)
        return b""

    def _trigger(self, index: int, vector: int) -> None:
        """An interrupt: pending while masked, else a signal of the armed eventfd; INTx is
        AUTOMASKED (masked after it fires, until the client unmasks it)."""
        irq = self.irqs[index]
        if irq.masked[vector]:
            irq.pending[vector] = True
            return
        fd = irq.trigger[vector]
        if fd is None:
            return
        self.x.signals[fd] += 1  # (a full eventfd stays full: not checked, see _run)
        if IRQS[index][0] & IRQ_AUTOMASKED:
            irq.masked[vector] = True

    @staticmethod
    def _bad_access(offset: int, region: int, count: int) -> bool:
        """BAR0: 1, 2, 4 or 8 bytes inside it; config: any count inside it; no other."""
        if region == BAR0_REGION:
            return count not in BAR_SIZES or offset + count > BAR0_SIZE
        if region == CONFIG_REGION:
            return not count or offset + count > CONFIG_SPACE_SIZE
        return True

    async def _region_read(self, p: bytes, fds: list[int]) -> bytes | int:
        if len(p) != ACCESS.size:
            return errno.EINVAL
        offset, region, count = ACCESS.unpack(p)
        if self._bad_access(offset, region, count):
            return errno.EINVAL
        host = self.host
        if region == BAR0_REGION:
            # Region offsets are relative to BAR0; the device decodes bus addresses, so
            # the access goes to wherever the device's own BAR0 register points.
            value = await host.read(Space.MEM, self.shadow.config.bar0 + offset, count)
            return p + value.to_bytes(count, "little")
        # The config region's bytes, from the whole DWs covering them (no side effects).
        first = offset & ~3
        data = b""
        for dw in range(first, offset + count, 4):
            data += (await host.cfg_read(dw, 4)).to_bytes(4, "little")
        return p + data[offset - first:offset - first + count]

    async def _region_write(self, p: bytes, fds: list[int]) -> bytes | int:
        if len(p) < ACCESS.size:
            return errno.EINVAL
        offset, region, count = ACCESS.unpack_from(p)
        data = p[ACCESS.size:]
        if len(data) != count or self._bad_access(offset, region, count):
            return errno.EINVAL
        if region == BAR0_REGION:
            await self.host.write(Space.MEM, self.shadow.config.bar0 + offset,
                                  int.from_bytes(data, "little"), count)
        else:
            for i, byte in enumerate(data):  # config writes are per byte lane
                await self.host.cfg_write(offset + i, byte, 1)
        return p[:ACCESS.size]

    async def _reset(self, p: bytes, fds: list[int]) -> bytes | int:
        if p:
            return errno.EINVAL
        await self.shadow.reset()
        return b""

    _HANDLERS: dict[int, Callable[[Oracle, bytes, list[int]], Awaitable[bytes | int]]] = {
        VERSION: _version, DMA_MAP: _dma_map, DMA_UNMAP: _dma_unmap, GET_INFO: _get_info,
        GET_REGION_INFO: _get_region_info, GET_IRQ_INFO: _get_irq_info, SET_IRQS: _set_irqs,
        REGION_READ: _region_read, REGION_WRITE: _region_write, DEVICE_RESET: _reset,
    }


def version_reply_error(payload: bytes) -> str | None:
    """Why our VERSION reply is wrong (None: right): major 0, minor 0 (we speak 0.0, and a
    minor may only go down), NUL-terminated JSON announcing exactly the limits we enforce."""
    if len(payload) < VER.size + 1 or not payload.endswith(b"\0"):
        return "not major, minor and NUL-terminated data"
    if VER.unpack_from(payload) != (0, 0):
        return f"version {VER.unpack_from(payload)}, not 0.0"
    try:
        caps = json.loads(payload[VER.size:-1])["capabilities"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"version data {payload[VER.size:]!r}: {exc}"
    return None if caps == OUR_CAPS else f"capabilities {caps}, not {OUR_CAPS}"


# -- the harness ----------------------------------------------------------------------------
class Hang(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise Hang(f"an input was still being served after {WATCHDOG_S} s")


def install_watchdog() -> None:
    signal.signal(signal.SIGALRM, _on_alarm)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _eventfd_count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _server_log() -> Iterator[list[logging.LogRecord]]:
    """The server's records of WARNING and up during one input, kept from the console (the
    harness judges them itself) and restored afterwards (tests share the loggers)."""
    logger = logging.getLogger("cosim.bridge")
    handler = _Records()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # no INFO/DEBUG records built: speed
    logger.propagate = False
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _frames(data: bytes) -> tuple[list[tuple[int, int, int, int, bytes]], int]:
    """The server's output as messages (msg_id, cmd, flags, errno, payload) and the number
    of trailing bytes that do not form one."""
    out = []
    pos = 0
    while len(data) - pos >= HDR.size:
        msg_id, cmd, size, flags, err = HDR.unpack_from(data, pos)
        if size < HDR.size or pos + size > len(data):
            break
        out.append((msg_id, cmd, flags, err, data[pos + HDR.size:pos + size]))
        pos += size
    return out, len(data) - pos


def _show(reply: tuple[int, int, int, int, bytes | None]) -> str:
    msg_id, cmd, flags, err, payload = reply
    body = "version" if payload is None else payload[:40].hex()
    return f"(id {msg_id} cmd {cmd} flags {flags:#x} errno {err} {body})"


def compare_replies(got: list[tuple[int, int, int, int, bytes]],
                    want: list[tuple[int, int, int, int, bytes | None]]) -> str | None:
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if w[4] is None and g[:4] == w[:4]:
            why = version_reply_error(g[4])
            if why is not None:
                return f"reply {i}: VERSION reply {why}"
        elif g != w:
            return f"reply {i} is {_show(g)}, the oracle says {_show(w)}"
    if len(got) > len(want):
        return f"{len(got)} replies, the oracle says {len(want)}: extra {_show(got[len(want)])}"
    if len(got) < len(want):
        return f"{len(got)} replies, the oracle says {len(want)}: missing {_show(want[len(got)])}"
    return None


@dataclass
class Outcome:
    category: str
    error: str | None = None  # the server's ProtocolError text
    failure: str | None = None  # what differed from the oracle (None: all good)
    error_replies: int = 0
    messages: int = 0


@dataclass
class Fuzzer:
    """One server-side `Device` and its shadow, fed input after input."""

    device: Device = field(default_factory=Device)
    shadow: Device = field(default_factory=Device)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.shadow_host = Host(self.shadow)
        self.memfd = os.memfd_create("cosim-fuzz-guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, MEMFD_SIZE)
        self.rdonly = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.memfd)
        os.close(self.rdonly)
        self.loop.close()

    def run(self, inp: Input) -> Outcome:
        self.counts["inputs"] += 1
        self.counts[inp.category] += 1
        out = self._run(inp)
        self.counts["messages"] += out.messages
        self.counts["error_replies"] += out.error_replies
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
        self.shadow_host = Host(self.shadow)

    def _send(self, sock: socket.socket, chunks: Sequence[Chunk],
              events: list[tuple[int, str]]) -> None:
        for chunk in chunks:
            fds = []
            for kind in chunk.fds:
                if kind == EVENTFD:
                    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                elif kind == FULL:
                    fd = os.eventfd(0, os.EFD_CLOEXEC)
                    os.eventfd_write(fd, EVENTFD_MAX)
                else:
                    fd = -1  # the shared memfd or /dev/null: not ours to close
                events.append((fd, kind))
                fds.append(self.memfd if kind == MEMFD else self.rdonly if fd < 0 else fd)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds \
                else []
            sock.sendmsg([chunk.data], anc)

    def _run(self, inp: Input) -> Outcome:
        out = Outcome(inp.category)
        kinds = [k for c in inp.chunks for k in c.fds]
        want = self.loop.run_until_complete(
            Oracle(self.shadow, self.shadow_host, kinds).run(inp.chunks, inp.eof))
        out.messages = want.messages
        out.error_replies = sum(1 for r in want.replies if r[2] & ERROR)
        before = open_fds()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        events: list[tuple[int, str]] = []  # per fd number: our eventfd (or -1), its kind
        try:
            self._send(a, inp.chunks, events)
            if inp.eof:
                a.shutdown(socket.SHUT_WR)
            server = DeviceCore(self.device, VfioUserTransport(b), idle_poll=0.01,
                                message_timeout=MESSAGE_TIMEOUT_S if inp.eof
                                else STALL_TIMEOUT_S)
            with _server_log() as records:
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
            got, stray = _frames(_read_all(a))
            signals = {n: _eventfd_count(fd) for n, (fd, kind) in enumerate(events)
                       if kind == EVENTFD}
        finally:
            a.close()
            b.close()
            for fd, _ in events:
                if fd >= 0:
                    os.close(fd)
        out.failure = self._judge(want, out, got, stray, records, signals)
        if out.failure is None and open_fds() != before:
            self.counts["fd_leaks"] += 1
            out.failure = f"fd leak: {before} open before, {open_fds()} after"
        return out

    @staticmethod
    def _judge(want: Expected, out: Outcome, got: list[tuple[int, int, int, int, bytes]],
               stray: int, records: list[logging.LogRecord],
               signals: dict[int, int]) -> str | None:
        if stray:
            return f"{stray} bytes of the server's output are not a whole message"
        why = compare_replies(got, want.replies)
        if why is not None:
            return why
        if (want.end is None) != (out.error is None):
            return (f"the oracle says {want.end or 'clean end'}, the server "
                    f"{'raised ' + repr(out.error) if out.error else 'ended cleanly'}")
        if out.error is not None and (not out.error.strip() or "\n" in out.error):
            return f"unclear error message {out.error!r}"
        loud = [r for r in records if r.levelno > logging.WARNING or r.exc_info]
        if loud:
            return f"server logged {loud[0].levelname}: {loud[0].getMessage()}"
        if len(records) != want.warnings:
            lines = "; ".join(r.getMessage() for r in records[:3])
            return (f"{len(records)} warning lines, the oracle says {want.warnings} "
                    f"(one per refused message): {lines}")
        for n, count in signals.items():
            if n not in want.unchecked and count != want.signals[n]:
                return (f"eventfd {n} signalled {count} times, the oracle says "
                        f"{want.signals[n]}")
        return None


def _read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def run(inputs: int, seed: int, max_failures: int = 20) -> dict[str, object]:
    install_watchdog()
    rnd = random.Random(seed)
    fuzzer = Fuzzer()
    failures: list[dict[str, str]] = []
    start = time.monotonic()
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
                log.info("%d inputs, %d messages, %d closed with a protocol error, "
                         "%d failures", i + 1, fuzzer.counts["messages"],
                         fuzzer.counts["rejected"], fuzzer.counts["failures"])
    finally:
        fuzzer.close()
    c = fuzzer.counts
    return {
        "inputs": c["inputs"],
        "messages": c["messages"],
        "error_replies": c["error_replies"],
        "rejected": c["rejected"],
        "hangs": c["hangs"],
        "fd_leaks": c["fd_leaks"],
        "failures": c["failures"],
        "categories": {cat: c[cat] for cat in CATEGORIES},
        "seconds": round(time.monotonic() - start, 1),
        "seed": seed,
        "first_failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.robustness.fuzz_vfio_user",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=100000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
    result = run(args.inputs, args.seed)
    print(f"fuzz_vfio_user: {result['inputs']} inputs ({result['messages']} messages, "
          f"{result['error_replies']} error replies), {result['rejected']} closed with a "
          f"protocol error, {result['hangs']} hangs, {result['fd_leaks']} fd leaks, "
          f"{result['failures']} failures in {result['seconds']} s")
    cats = result["categories"]
    assert isinstance(cats, dict)
    print("  categories: " + ", ".join(f"{k} {v}" for k, v in cats.items()))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
