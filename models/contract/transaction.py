"""The PCIe-like transaction interface, defined once.

Everything that talks to a device -- the golden models, the cocotb testbench, the QEMU
bridge -- speaks in these `Request`s and `Completion`s.  The RTL's stream signatures
(`rtl/transaction.py`) and the testbench's bus signal names are derived from
`REQUEST_FIELDS` and `COMPLETION_FIELDS` below.

Ref: PCI Express Base Specification 4.0, 2.2 (TLP formats) -- simplified: single-DW
requests with first-DW byte enables, 32-bit data, no last-DW BE, no length field.

Decisions (see docs/transactions.md):
- An access of any size or alignment is split by `Host` into one request per DW it
  touches, with byte enables selecting the bytes; an 8-byte access is two requests,
  lower DW first.  Data sits in its byte lanes (a byte at address 0xe9 is lane 1).
- Memory writes are posted: the device returns no completion.  All other kinds complete.
- A read completing as unsupported request reads as all-ones at the `Host`, as a root
  complex returns it to a CPU.

The requester side (the device as bus master, docs/transactions.md "Device-initiated
requests"): the device's own requests are `Request`s too, of the kinds `MASTER_KINDS` --
memory writes (posted) and memory reads (completed by the host with a `Completion` of the
read's tag: data, or UR where the host has no memory) -- with byte addresses of host
memory.  They leave the RTL on `mreq` and their completions come back on `mcpl`, with the
same fields as `req` / `cpl`.  The device's interrupt is the INTx virtual wire `intx`, a
level (PCIe 2.2.8.1: Assert_INTx / Deassert_INTx messages, simplified to the state they
convey), or an MSI, which is an ordinary memory write to the address the MSI capability
holds (PCIe 6.1.4); the host tells the two apart by address.  The host side is a
`HostPort`.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

__all__ = [
    "COMPLETION_FIELDS",
    "CONSOLE_FIELDS",
    "Completion",
    "Endpoint",
    "Host",
    "HostPort",
    "Kind",
    "MASTER_KINDS",
    "REQUEST_FIELDS",
    "Request",
    "Space",
    "Status",
    "StreamCompletions",
    "io_write_stream",
    "split_access",
    "stream_requests",
    "transact_all",
]


class Kind(IntEnum):
    """Request kind (the RTL's `req.kind`, 3 bits)."""

    MEM_READ = 0
    MEM_WRITE = 1
    CFG_READ = 2
    CFG_WRITE = 3
    IO_READ = 4
    IO_WRITE = 5

    @property
    def is_write(self) -> bool:
        return self in (Kind.MEM_WRITE, Kind.CFG_WRITE, Kind.IO_WRITE)

    @property
    def posted(self) -> bool:
        """Posted requests get no completion (PCIe 2.4.1: memory writes)."""
        return self is Kind.MEM_WRITE


class Status(IntEnum):
    """Completion status (the RTL's `cpl.status`, 3 bits; PCIe Table 2-34 encodings)."""

    SC = 0  # successful completion
    UR = 1  # unsupported request


# Field name -> width in bits.  The order is the order of the Verilog ports.
REQUEST_FIELDS: dict[str, int] = {"kind": 3, "tag": 8, "addr": 64, "be": 4, "data": 32}
COMPLETION_FIELDS: dict[str, int] = {"tag": 8, "status": 3, "data": 32}
CONSOLE_FIELDS: dict[str, int] = {"data": 8}  # the debugcon output stream `con`, a byte a beat

ALL_ONES = 0xFFFF_FFFF

# The kinds a device may issue as a bus master (on `mreq`).
MASTER_KINDS: tuple[Kind, ...] = (Kind.MEM_WRITE, Kind.MEM_READ)


_ADDR_INVALID = ~((1 << REQUEST_FIELDS["addr"]) - 4)  # any bit set: not a DW-aligned address
_KIND_NAMES = {k: k.name for k in Kind}  # `Enum.name` is a slow property (bridge hot path)
_WRITES = frozenset((Kind.MEM_WRITE, Kind.CFG_WRITE, Kind.IO_WRITE))


@dataclass(frozen=True, slots=True)
class Request:
    """One single-DW request.  `addr` is DW aligned (its low two bits are zero)."""

    kind: Kind
    addr: int
    be: int = 0xF
    data: int = 0
    tag: int = 0

    def __post_init__(self) -> None:
        # One combined test first: every guest access of the bridge builds a Request, and
        # the separate checks (for the message) only run when something is wrong.
        if (self.addr & _ADDR_INVALID) | (self.be & ~0xF) | (self.data & ~ALL_ONES) | (
                self.tag & ~0xFF):
            self._invalid()

    def _invalid(self) -> None:
        if self.addr & 3 or not 0 <= self.addr < 1 << REQUEST_FIELDS["addr"]:
            raise ValueError(
                f"Request address must be a DW-aligned 64-bit value, not {self.addr:#x}"
            )
        if not 0 <= self.be <= 0xF:
            raise ValueError(f"Byte enables must be 4 bits, not {self.be:#x}")
        if not 0 <= self.data <= ALL_ONES:
            raise ValueError(f"Request data must be 32 bits, not {self.data:#x}")
        raise ValueError(f"Tag must be 8 bits, not {self.tag!r}")

    def __str__(self) -> str:
        data = f" data={self.data:#010x}" if self.kind in _WRITES else ""
        return (f"{_KIND_NAMES[self.kind]} tag={self.tag} addr={self.addr:#x} "
                f"be={self.be:#06b}{data}")


_STATUS_NAMES = {s: s.name for s in Status}


@dataclass(frozen=True, slots=True)
class Completion:
    tag: int
    status: Status = Status.SC
    data: int = 0

    def __str__(self) -> str:
        return f"CPL tag={self.tag} {_STATUS_NAMES[self.status]} data={self.data:#010x}"


class Endpoint(Protocol):
    """What a device backend offers: the model, the RTL under cocotb, anything else.

    `transact` returns the completion, or None for a posted request.  `reset` is a
    conventional reset (QEMU's DEVICE_RESET, PCIe hot reset).  An endpoint may also offer
    `async transact_all(reqs) -> list[Completion | None]`: the same as `transact` on each
    request in order, done at once where that is cheaper (`transact_all` below), and
    `async io_write_stream(port, data, tag) -> StreamCompletions`: exactly the requests
    `stream_requests(port, data, tag)` (each byte of `data` its own 1-byte I/O write of
    `port`, in order, tags counting up from `tag`) served as `transact` would serve them,
    their completions returned compactly (`io_write_stream` below).  Why: the bridge's
    debugcon stream is thousands of such writes, and a `Request` and a `Completion`
    object per byte were most of its cost per byte (bench/README.md item 8).
    """

    async def transact(self, req: Request) -> Completion | None: ...

    async def reset(self) -> None: ...


class HostPort(Protocol):
    """The host (root complex) as a device's bus-master requests meet it.

    `memory_write` takes a posted MEM_WRITE: the host stores the enabled bytes of `data`
    at `addr` (an MSI address is an interrupt message instead), or drops the write and
    logs it where no memory is (PCIe 2.3.1: an unsupported posted request gets no
    completion).  `memory_read` answers a MEM_READ with a `Completion` of its tag: SC and
    the DW's data, or UR with data 0 where no memory is.  `intx` is the level of the
    device's INTx wire, called on every change.  None of them may raise for a bad address:
    a device's request is the device's word, not the host's bug.
    """

    def memory_write(self, req: Request) -> None: ...

    def memory_read(self, req: Request) -> Completion: ...

    def intx(self, asserted: bool) -> None: ...


async def transact_all(endpoint: Endpoint, reqs: Sequence[Request]) -> list[Completion | None]:
    """`reqs` in order, through the endpoint's `transact_all` if it has one (the RTL
    bridge serves an 8-byte read's two DWs in one simulator round trip), else one by one.
    The result is the same either way: only the cost differs."""
    many = getattr(endpoint, "transact_all", None)
    if many is not None:
        return await many(reqs)  # type: ignore[no-any-return]
    return [await endpoint.transact(req) for req in reqs]


@dataclass(frozen=True, slots=True)
class StreamCompletions:
    """The completions of `stream_requests(port, data, tag)`, without an object each:
    request `i` (tag `(tag + i) & 0xFF`) completed with `status[i]` and `data[i]`.

    `uniform` (status, data) when every request completed alike (a debugcon stream: all
    SC with data 0), so a log can format that once per batch; else None."""

    tag: int
    status: Sequence[int]
    data: Sequence[int]
    uniform: tuple[Status, int] | None

    def __len__(self) -> int:
        return len(self.status)

    def completion(self, i: int) -> Completion:
        return Completion((self.tag + i) & 0xFF, Status(self.status[i]), self.data[i])

    @classmethod
    def alike(cls, tag: int, n: int, status: Status, data: int) -> StreamCompletions:
        """`n` completions, all with `status` and `data`."""
        return cls(tag, bytes([status]) * n, array.array("I", [data]) * n, (status, data))

    @classmethod
    def of(cls, tag: int, cpls: Sequence[Completion | None]) -> StreamCompletions:
        """From one `Completion` per request (the fallback through `transact_all`)."""
        if any(cpl is None for cpl in cpls):
            raise RuntimeError("an I/O write completed as posted: I/O writes complete")
        status = bytes(cpl.status for cpl in cpls)  # type: ignore[union-attr]
        data = array.array("I", (cpl.data for cpl in cpls))  # type: ignore[union-attr]
        uniform = None
        if cpls and status.count(status[0]) == len(status) and data.count(data[0]) == len(data):
            uniform = (Status(status[0]), data[0])
        return cls(tag, status, data, uniform)


def stream_requests(port: int, data: bytes, tag: int) -> list[Request]:
    """Each byte of `data` as its own 1-byte I/O write of `port`, in order, tags `tag`,
    `tag + 1`, ... (mod 256): what `Host.io_write(port, byte, 1)` per byte sends."""
    dw, be, lane = stream_lane(port)
    return [Request(Kind.IO_WRITE, dw, be, byte << lane, (tag + i) & 0xFF)
            for i, byte in enumerate(data)]


def stream_lane(port: int) -> tuple[int, int, int]:
    """A 1-byte I/O write of `port`: its DW address, byte enables and the bit position of
    its byte lane in the data."""
    ((dw, be, _),) = split_access(port, 1)
    return dw, be, 8 * ((be & -be).bit_length() - 1)


async def io_write_stream(endpoint: Endpoint, port: int, data: bytes,
                          tag: int) -> StreamCompletions:
    """`stream_requests(port, data, tag)` served through the endpoint's `io_write_stream`
    if it has one, else as `transact_all` (`Request` and `Completion` objects per byte).
    The result is the same either way: only the cost differs."""
    stream = getattr(endpoint, "io_write_stream", None)
    if stream is not None:
        return await stream(port, data, tag)  # type: ignore[no-any-return]
    return StreamCompletions.of(tag, await transact_all(endpoint, stream_requests(port, data, tag)))


class Space(IntEnum):
    MEM = 0
    CFG = 1
    IO = 2


_READ = {Space.MEM: Kind.MEM_READ, Space.CFG: Kind.CFG_READ, Space.IO: Kind.IO_READ}
_WRITE = {Space.MEM: Kind.MEM_WRITE, Space.CFG: Kind.CFG_WRITE, Space.IO: Kind.IO_WRITE}


def split_access(addr: int, size: int) -> list[tuple[int, int, int]]:
    """Split an access of `size` bytes at `addr` into (dw_addr, be, shift) per DW touched.

    `shift` is the bit position, in the access's value, of the DW's first enabled byte.
    """
    if size not in (1, 2, 4, 8):
        raise ValueError(f"Access size must be 1, 2, 4 or 8 bytes, not {size!r}")
    parts = []
    pos = addr
    end = addr + size
    while pos < end:
        dw = pos & ~3
        lo = pos - dw
        hi = min(end - dw, 4)
        be = ((1 << hi) - 1) & ~((1 << lo) - 1)
        parts.append((dw, be, (pos - addr) * 8))
        pos = dw + hi
    return parts


@dataclass
class Host:
    """The root-complex side: byte-addressed reads and writes of any size over an Endpoint.

    This is the one `read`/`write` API shared by the bridge, the testbench and tests.
    """

    endpoint: Endpoint
    _tag: int = field(default=0, repr=False)

    def _next_tag(self) -> int:
        self._tag = (self._tag + 1) & 0xFF
        return self._tag

    async def read(self, space: Space, addr: int, size: int) -> int:
        if not addr & 3 and size == 4:
            # The common case (every guest ioread32) as one whole DW: no split, no shifts.
            cpl = await self.endpoint.transact(Request(_READ[space], addr, 0xF,
                                                       tag=self._next_tag()))
            return ALL_ONES if cpl is None or cpl.status != Status.SC else cpl.data
        if not addr & 3 and size == 8:
            # The driver's 8-byte RNG64 reads: two whole DWs, lower first, handed over
            # together (`transact_all`).
            kind = _READ[space]
            first = Request(kind, addr, 0xF, tag=self._next_tag())
            cpls = await transact_all(
                self.endpoint, (first, Request(kind, addr + 4, 0xF, tag=self._next_tag())))
            value = 0
            for i, cpl in enumerate(cpls):
                data = ALL_ONES if cpl is None or cpl.status != Status.SC else cpl.data
                value |= data << (32 * i)
            return value
        value = 0
        for dw, be, shift in split_access(addr, size):
            cpl = await self.endpoint.transact(Request(_READ[space], dw, be, tag=self._next_tag()))
            data = ALL_ONES if cpl is None or cpl.status != Status.SC else cpl.data
            lo = (be & -be).bit_length() - 1  # first enabled byte lane
            nbytes = be.bit_count()
            value |= ((data >> (8 * lo)) & ((1 << (8 * nbytes)) - 1)) << shift
        return value

    async def write(self, space: Space, addr: int, value: int, size: int) -> None:
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"Value {value:#x} does not fit in {size} bytes")
        for dw, be, shift in split_access(addr, size):
            lo = (be & -be).bit_length() - 1
            nbytes = be.bit_count()
            data = ((value >> shift) & ((1 << (8 * nbytes)) - 1)) << (8 * lo)
            await self.endpoint.transact(
                Request(_WRITE[space], dw, be, data=data, tag=self._next_tag())
            )

    # Named shorthands, as a root complex API names them.
    async def cfg_read(self, offset: int, size: int = 4) -> int:
        return await self.read(Space.CFG, offset, size)

    async def cfg_write(self, offset: int, value: int, size: int = 4) -> None:
        await self.write(Space.CFG, offset, value, size)

    async def mem_read(self, addr: int, size: int = 4) -> int:
        return await self.read(Space.MEM, addr, size)

    async def mem_write(self, addr: int, value: int, size: int = 4) -> None:
        await self.write(Space.MEM, addr, value, size)

    async def io_read(self, port: int, size: int = 1) -> int:
        return await self.read(Space.IO, port, size)

    async def io_write(self, port: int, value: int, size: int = 1) -> None:
        await self.write(Space.IO, port, value, size)

    async def io_write_each(self, port: int, data: bytes) -> StreamCompletions:
        """Each byte of `data` as its own 1-byte I/O write of `port`, in order: exactly the
        requests `io_write(port, byte, 1)` per byte would send (tags included), handed to
        the endpoint together (`io_write_stream`: the endpoint's own if it has one, else
        `transact_all`); their completions.

        Why: the bridge's debugcon stream (every byte the guest writes to port 0xe9 is one
        I/O write).  One await per byte cost a Python <-> simulator round trip, a txlog
        write and a capture flush per byte; handed over at once, the RTL endpoint runs
        them back to back in one simulator call, without a Python object per byte."""
        first = (self._tag + 1) & 0xFF
        if not data:
            return StreamCompletions(first, b"", array.array("I"), None)
        self._tag = (self._tag + len(data)) & 0xFF
        return await io_write_stream(self.endpoint, port, data, first)
