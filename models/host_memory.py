"""Host memory as a device's bus-master requests see it: a `HostPort` in pure Python.

Regions of RAM at host addresses; a device write stores its enabled bytes, a read returns
the DW; an access outside every region is refused (a write dropped, a read UR), recorded
and logged, never raised.  A write to the MSI address (`msi_address`, what the x86 host
bridge decodes as an interrupt message: Intel SDM vol. 3, 11.11.1, 0xFEEx_xxxx) is an
interrupt, not memory.  Everything the device did is kept in order (`events`), so a test
can check each write against an oracle and the interrupts against what the registers say.

Used by the model's tests and by the testbench's host-memory agent; the bridge has its
own `HostPort` over guest RAM (the same rules, QEMU's memory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from models.contract.transaction import Completion, Kind, Request, Status

__all__ = ["MSI_WINDOW", "HostEvent", "HostMemory"]

log = logging.getLogger("cosim.model.host")

# x86's interrupt message window: a DW write there is an MSI (Intel SDM vol. 3, 11.11.1).
MSI_WINDOW = range(0xFEE0_0000, 0xFEF0_0000)


@dataclass(frozen=True)
class HostEvent:
    """One thing the device did to the host, in order.

    kind: "write" (stored), "refused_write", "read", "refused_read", "msi" (a write to
    the MSI window: `data` is the message data), "intx" (`data` the new level)."""

    kind: str
    addr: int = 0
    be: int = 0
    data: int = 0


@dataclass
class HostMemory:
    """RAM regions at host addresses, as a `HostPort`."""

    regions: dict[int, bytearray] = field(default_factory=dict)  # base -> bytes
    events: list[HostEvent] = field(default_factory=list)
    intx_level: bool = False

    def add_region(self, base: int, size: int, fill: int = 0) -> bytearray:
        """A region of `size` bytes at `base`, every byte `fill` (regions may not overlap)."""
        if size <= 0 or base < 0:
            raise ValueError(f"region must have a positive size at a host address, not "
                             f"{size!r} bytes at {base!r}")
        for other, mem in self.regions.items():
            if base < other + len(mem) and other < base + size:
                raise ValueError(f"region {base:#x}+{size:#x} overlaps {other:#x}+{len(mem):#x}")
        mem = bytearray([fill]) * size
        self.regions[base] = mem
        return mem

    def _find(self, addr: int) -> tuple[bytearray, int] | None:
        """The region holding the whole DW at `addr`, and the DW's offset in it."""
        for base, mem in self.regions.items():
            if base <= addr and addr + 4 <= base + len(mem):
                return mem, addr - base
        return None

    def memory_write(self, req: Request) -> None:
        if req.kind is not Kind.MEM_WRITE:
            raise ValueError(f"not a memory write: {req}")
        if req.addr in MSI_WINDOW:
            self.events.append(HostEvent("msi", req.addr, req.be, req.data))
            return
        hit = self._find(req.addr)
        if hit is None:
            log.warning("device write outside host memory, dropped: %s", req)
            self.events.append(HostEvent("refused_write", req.addr, req.be, req.data))
            return
        mem, off = hit
        for lane in range(4):
            if req.be >> lane & 1:
                mem[off + lane] = req.data >> (8 * lane) & 0xFF
        self.events.append(HostEvent("write", req.addr, req.be, req.data))

    def memory_read(self, req: Request) -> Completion:
        if req.kind is not Kind.MEM_READ:
            raise ValueError(f"not a memory read: {req}")
        hit = self._find(req.addr)
        if hit is None:
            log.warning("device read outside host memory, completed UR: %s", req)
            self.events.append(HostEvent("refused_read", req.addr, req.be))
            return Completion(req.tag, Status.UR, 0)
        mem, off = hit
        data = int.from_bytes(mem[off:off + 4], "little")
        self.events.append(HostEvent("read", req.addr, req.be, data))
        return Completion(req.tag, Status.SC, data)

    def intx(self, asserted: bool) -> None:
        if asserted != self.intx_level:
            self.intx_level = asserted
            self.events.append(HostEvent("intx", data=int(asserted)))

    def of_kind(self, *kinds: str) -> list[HostEvent]:
        return [e for e in self.events if e.kind in kinds]
