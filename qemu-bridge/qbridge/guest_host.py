"""The guest as the device's bus-master requests meet it: guest RAM and the interrupt.

    host = GuestHost(transport)        # a models.contract.transaction.HostPort
    endpoint.attach_host(host)         # the backend's device now reaches guest memory

A transport offers a `GuestBus`: `dma_read`/`dma_write` of guest-physical bytes (vfio-user:
the DMA_MAP windows, mapped memfd or DMA_READ/WRITE messages; x-pci-proxy-dev: the
SYNC_SYSMEM regions, mapped), raising `GuestMemoryError` where no guest memory is, and the
delivery of the device's interrupt, `deliver_msi()` / `deliver_intx(level)`, True where it
reached QEMU.  `GuestHost` turns the device's requests into those calls, with the rules of
the contract's `HostPort`: an access outside guest memory is refused (a write dropped, a
read completed UR), logged as an error, never raised into the device; a write to the
x86 interrupt message window (models.host_memory.MSI_WINDOW) is the MSI, not memory.

The MSI's address and data are not interpreted: QEMU virtualises the MSI capability
(vfio-pci, and the guest's programming of it reaches the device too, so the device knows
where to write); what delivers it is the eventfd QEMU armed for the one vector.  INTx is
a level: its rising edge is delivered, its falling edge only recorded (vfio's INTx
eventfd is an edge; QEMU masks the line until the guest's EOI and unmasks it then).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Protocol

from models.contract.transaction import Completion, Kind, Request, Status
from models.host_memory import MSI_WINDOW

__all__ = ["GuestBus", "GuestHost", "GuestMemoryError", "HostCounts", "byte_runs"]

log = logging.getLogger("cosim.bridge.dma")


class GuestMemoryError(Exception):
    """A device access the guest's memory cannot take: no region covers the address, or
    the region does not allow the direction."""


class GuestBus(Protocol):
    """What a transport offers the device's bus-master side."""

    name: str

    def dma_read(self, addr: int, size: int) -> bytes: ...

    def dma_write(self, addr: int, data: bytes) -> None: ...

    def deliver_msi(self) -> bool: ...

    def deliver_intx(self, asserted: bool) -> bool: ...


def byte_runs(be: int) -> list[tuple[int, int]]:
    """The (first byte, length) runs of enabled bytes of a DW's byte enables."""
    runs: list[tuple[int, int]] = []
    lane = 0
    while lane < 4:
        if be >> lane & 1:
            start = lane
            while lane < 4 and be >> lane & 1:
                lane += 1
            runs.append((start, lane - start))
        else:
            lane += 1
    return runs


_FULL = byte_runs(0xF)
_RUNS = {be: byte_runs(be) for be in range(16)}


@dataclass
class HostCounts:
    """What the device did to the guest (the server's summary line, the tests)."""

    writes: int = 0
    reads: int = 0
    refused: int = 0
    msi: int = 0
    intx: int = 0
    undelivered: int = 0  # interrupts the transport could not hand to QEMU


class GuestHost:
    """A `HostPort` over a transport's `GuestBus`."""

    def __init__(self, bus: GuestBus) -> None:
        self.bus = bus
        self.counts = HostCounts()
        self._intx = False
        self._refusing = False  # in a run of refused accesses: logged once, at its start
        # Interrupt latency as the server sees it: from handing an interrupt to QEMU to the
        # guest's next message (the handler's INT_STATUS read: a driver waiting for its
        # interrupt does nothing else on the device meanwhile), `guest_message()`.
        self.irq_latencies: list[float] = []
        self._irq_at: float | None = None

    def memory_write(self, req: Request) -> None:
        if req.kind is not Kind.MEM_WRITE:
            raise ValueError(f"not a memory write: {req}")
        if req.addr in MSI_WINDOW:
            self.counts.msi += 1
            self._delivered(self.bus.deliver_msi())
            return
        data = req.data.to_bytes(4, "little")
        runs = _FULL if req.be == 0xF else _RUNS[req.be]
        try:
            for start, length in runs:
                self.bus.dma_write(req.addr + start, data[start:start + length])
        except GuestMemoryError as exc:
            self._refuse(f"device write refused (dropped: a posted request has no "
                         f"completion, PCIe 2.3.1): {req}: {exc}")
            return
        self._refusing = False
        self.counts.writes += 1

    def memory_write_block(self, addr: int, data: bytes) -> None:
        """Memory writes of whole DWs at `addr`, `addr + 4`, ... with `data`'s bytes, none
        in the MSI window: the same as a `memory_write` each, in one guest-RAM access (the
        RTL backend's fast path hands a transfer's contiguous writes over so)."""
        try:
            self.bus.dma_write(addr, data)
        except GuestMemoryError:  # where it stops is found DW by DW, with its log line
            for off in range(0, len(data), 4):
                self.memory_write(Request(Kind.MEM_WRITE, addr + off, 0xF,
                                          int.from_bytes(data[off:off + 4], "little")))
            return
        self._refusing = False
        self.counts.writes += len(data) // 4

    def memory_read(self, req: Request) -> Completion:
        if req.kind is not Kind.MEM_READ:
            raise ValueError(f"not a memory read: {req}")
        if req.addr in MSI_WINDOW:
            # Interrupt messages are write-only: nothing to read there.
            self._refuse(f"device read of the interrupt message window refused (UR): {req}")
            return Completion(req.tag, Status.UR, 0)
        try:
            data = self.bus.dma_read(req.addr, 4)
        except GuestMemoryError as exc:
            self._refuse(f"device read refused (UR): {req}: {exc}")
            return Completion(req.tag, Status.UR, 0)
        self._refusing = False
        self.counts.reads += 1
        value = int.from_bytes(data, "little")
        if req.be != 0xF:  # disabled lanes read as 0, as the testbench's host memory
            value &= int.from_bytes(bytes(0xFF if req.be >> i & 1 else 0 for i in range(4)),
                                    "little")
        return Completion(req.tag, Status.SC, value)

    def _delivered(self, ok: bool) -> None:
        if ok:
            self._irq_at = time.perf_counter()
        else:
            self.counts.undelivered += 1

    def guest_message(self, now: float) -> None:
        """A message of QEMU's arrived at `now` (time.perf_counter()): the end of an
        interrupt's latency if one was handed over since the last message."""
        if self._irq_at is not None:
            self.irq_latencies.append(now - self._irq_at)
            self._irq_at = None

    def latency_summary(self) -> str:
        """The interrupt latencies of the run, for server.log's last line (bench.run)."""
        lat = self.irq_latencies
        if not lat:
            return "interrupt to the guest's next access: none measured"
        return (f"interrupt to the guest's next access: n={len(lat)} median "
                f"{statistics.median(lat) * 1e6:.1f} us min {min(lat) * 1e6:.1f} us "
                f"max {max(lat) * 1e6:.1f} us")

    def _refuse(self, why: str) -> None:
        """Count a refused access; log the first of a run (a transfer to a bad buffer is
        thousands of DWs: one line says it, the count says how many)."""
        self.counts.refused += 1
        if not self._refusing:
            self._refusing = True
            log.error("%s (further refusals in this run are counted, not logged)", why)

    def intx(self, asserted: bool) -> None:
        if asserted == self._intx:
            return
        self._intx = asserted
        if asserted:
            self.counts.intx += 1
            self._delivered(self.bus.deliver_intx(True))
        else:
            self.bus.deliver_intx(False)
