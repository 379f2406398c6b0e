"""The one read/write API: access splitting, byte lanes, posted writes, UR as all-ones."""

from __future__ import annotations

import asyncio

import pytest

from models.contract.transaction import Completion, Host, Kind, Request, Space, Status, split_access


class Recorder:
    """An Endpoint that records requests and answers reads with a fixed pattern."""

    def __init__(self, status: Status = Status.SC) -> None:
        self.requests: list[Request] = []
        self.status = status

    async def transact(self, req: Request) -> Completion | None:
        self.requests.append(req)
        if req.kind.posted:
            return None
        return Completion(req.tag, self.status, 0x4433_2211 + req.addr)

    async def reset(self) -> None:
        pass


@pytest.mark.parametrize(
    ("addr", "size", "parts"),
    [
        (0x0, 4, [(0x0, 0b1111, 0)]),
        (0xE9, 1, [(0xE8, 0b0010, 0)]),
        (0x2, 2, [(0x0, 0b1100, 0)]),
        (0x3, 2, [(0x0, 0b1000, 0), (0x4, 0b0001, 8)]),
        (0x2, 4, [(0x0, 0b1100, 0), (0x4, 0b0011, 16)]),
        (0x0, 8, [(0x0, 0b1111, 0), (0x4, 0b1111, 32)]),
        (0x5, 8, [(0x4, 0b1110, 0), (0x8, 0b1111, 24), (0xC, 0b0001, 56)]),
    ],
)
def test_split_access_gives_one_dw_per_touched_dword(addr: int, size: int, parts: list) -> None:
    assert split_access(addr, size) == parts


def test_split_access_refuses_odd_sizes_naming_the_size() -> None:
    with pytest.raises(ValueError, match="not 3"):
        split_access(0, 3)


def test_sub_word_read_takes_its_byte_lanes() -> None:
    ep = Recorder()
    value = asyncio.run(Host(ep).read(Space.MEM, 0x1001, 2))
    assert ep.requests[0].be == 0b0110 and ep.requests[0].addr == 0x1000
    assert value == ((0x4433_2211 + 0x1000) >> 8) & 0xFFFF


def test_eight_byte_read_is_two_dw_reads_lower_first() -> None:
    ep = Recorder()
    value = asyncio.run(Host(ep).read(Space.MEM, 0x1000, 8))
    assert [r.addr for r in ep.requests] == [0x1000, 0x1004]
    assert value == (0x4433_2211 + 0x1004) << 32 | (0x4433_2211 + 0x1000)


def test_write_places_data_in_byte_lanes_and_mem_writes_are_posted() -> None:
    ep = Recorder()
    asyncio.run(Host(ep).write(Space.IO, 0xE9, 0x41, 1))
    asyncio.run(Host(ep).write(Space.MEM, 0x1002, 0xBEEF, 2))
    io, mem = ep.requests
    assert (io.kind, io.addr, io.be, io.data) == (Kind.IO_WRITE, 0xE8, 0b0010, 0x4100)
    assert (mem.kind, mem.be, mem.data) == (Kind.MEM_WRITE, 0b1100, 0xBEEF_0000)


def test_unsupported_request_reads_as_all_ones() -> None:
    value = asyncio.run(Host(Recorder(Status.UR)).read(Space.CFG, 0x0, 2))
    assert value == 0xFFFF


def test_tags_advance_per_request() -> None:
    ep = Recorder()
    asyncio.run(Host(ep).read(Space.MEM, 0, 8))
    assert ep.requests[0].tag != ep.requests[1].tag


def test_request_validation_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="DW-aligned"):
        Request(Kind.MEM_READ, 0x2)
    with pytest.raises(ValueError, match="Byte enables"):
        Request(Kind.MEM_READ, 0x0, be=0x10)


class UrAt(Recorder):
    """A Recorder whose DW at `ur_addr` completes as unsupported request."""

    def __init__(self, ur_addr: int) -> None:
        super().__init__()
        self.ur_addr = ur_addr

    async def transact(self, req: Request) -> Completion | None:
        cpl = await super().transact(req)
        if cpl is not None and req.addr == self.ur_addr:
            return Completion(req.tag, Status.UR, 0)
        return cpl


@pytest.mark.parametrize("ur_addr", [None, 0x1000, 0x1004, 0x1008])
@pytest.mark.parametrize("size", [1, 2, 4, 8])
@pytest.mark.parametrize("offset", range(8))
def test_every_read_equals_the_little_endian_bytes_of_its_dwords(
        offset: int, size: int, ur_addr: int | None) -> None:
    # Oracle: memory as bytes (each DW little-endian; a UR DW reads as 0xff bytes), sliced
    # at the access -- independent of Host's fast paths for aligned 4- and 8-byte reads.
    ep = UrAt(ur_addr if ur_addr is not None else -1)
    addr = 0x1000 + offset
    value = asyncio.run(Host(ep).read(Space.MEM, addr, size))
    memory = b"".join(
        b"\xff" * 4 if dw == ur_addr else (0x4433_2211 + dw).to_bytes(4, "little")
        for dw in range(0x1000, 0x1010, 4))
    want = int.from_bytes(memory[offset:offset + size], "little")
    assert value == want, f"read {size} at +{offset} (UR at {ur_addr}): {value:#x} != {want:#x}"
    assert [r.addr for r in ep.requests] == sorted({(addr + i) & ~3 for i in range(size)}), \
        f"requests {[hex(r.addr) for r in ep.requests]} are not the touched DWs, lowest first"


class Batching(Recorder):
    """A Recorder that also takes requests together (`transact_all`), recording batches."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Request]] = []

    async def transact_all(self, reqs: list[Request]) -> list[Completion | None]:
        self.batches.append(list(reqs))
        return [await self.transact(req) for req in reqs]


@pytest.mark.parametrize("offset", [0, 4, 8])
def test_aligned_eight_byte_read_goes_to_transact_all_as_one_batch(offset: int) -> None:
    # An endpoint offering transact_all (the RTL bridge's lock-step endpoint) gets an 8-byte
    # read's two DWs together, lower first, with consecutive tags; the value is the same
    # as through an endpoint without it.
    batching, plain = Batching(), Recorder()
    got = asyncio.run(Host(batching).read(Space.MEM, 0x1000 + offset, 8))
    want = asyncio.run(Host(plain).read(Space.MEM, 0x1000 + offset, 8))
    assert got == want, f"batched {got:#x} != one by one {want:#x}"
    assert len(batching.batches) == 1, f"expected one batch, got {batching.batches}"
    lo, hi = batching.batches[0]
    assert (lo.addr, hi.addr) == (0x1000 + offset, 0x1004 + offset), f"{lo}, {hi}"
    assert hi.tag == (lo.tag + 1) & 0xFF, f"tags {lo.tag}, {hi.tag} are not consecutive"


def test_unaligned_and_smaller_reads_do_not_batch() -> None:
    ep = Batching()
    for addr, size in ((0x1002, 8), (0x1000, 4), (0x1001, 2)):
        asyncio.run(Host(ep).read(Space.MEM, addr, size))
    assert ep.batches == [], f"batched {ep.batches}"


@pytest.mark.parametrize("port", [0xE9, 0x80, 0x3F8])
def test_io_write_each_sends_what_a_write_per_byte_sends_as_one_batch(port: int) -> None:
    # The debugcon stream's path: the same requests (addresses, lanes, data, tags) as
    # one `io_write(port, byte, 1)` per byte, in order, but handed over in one batch.
    data = bytes(range(256)) + b"\x00\xff"  # more than 256 bytes: the tag wraps
    batching, plain = Batching(), Recorder()
    host = Host(batching)
    asyncio.run(host.io_write(port, 0x5A, 1))  # a tag in use before: the stream goes on
    asyncio.run(host.io_write_each(port, data))
    asyncio.run(host.io_write(port, 0xA5, 1))
    one_by_one = Host(plain)
    for byte in (0x5A, *data, 0xA5):
        asyncio.run(one_by_one.io_write(port, byte, 1))
    assert batching.requests == plain.requests, "io_write_each differs from io_write per byte"
    assert [len(b) for b in batching.batches] == [len(data)], \
        f"expected one batch of {len(data)}, got {[len(b) for b in batching.batches]}"


def test_io_write_each_of_nothing_sends_nothing() -> None:
    ep = Batching()
    asyncio.run(Host(ep).io_write_each(0xE9, b""))
    assert ep.requests == [] and ep.batches == [], f"{ep.requests}, {ep.batches}"
