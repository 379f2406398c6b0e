"""Functional coverage model: coverpoints, their bins, and the report.  Pure Python.

The bins are derived from the interface definitions (kinds, the register map, config
space, the byte-enable patterns `Host` can produce), so a register added to the map is a
new bin nobody can forget.  `tb.uvm_coverage.Coverage` fills a `CoverageDb` from what the
monitors saw; `tb.regression` merges the per-test databases and prints the same report.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType

from models.contract.regmap import CONFIG_DWORDS, DEBUGCON_PORT, RNG_REGISTERS, Register
from models.contract.transaction import REQUEST_FIELDS, Kind, Space, split_access
from tb.dma_program import CASES as DMA_CASES

__all__ = [
    "ADDR_BITS",
    "BE_PATTERNS",
    "COVERPOINTS",
    "CoverageDb",
    "byte_address",
    "claimed_bytes",
    "dword_name",
    "seed_class",
]

# Every byte-enable pattern an access of 1, 2, 4 or 8 bytes at any alignment produces.
BE_PATTERNS: tuple[int, ...] = tuple(sorted({
    be for size in (1, 2, 4, 8) for addr in range(8) for _, be, _ in split_access(addr, size)
}))


def dword_name(reg: Register, dw: int) -> str:
    """A register's name for one of its DWs: `RNG`, or `RNG64[31:0]` / `RNG64[63:32]`."""
    if reg.size == 4:
        return reg.name
    low = 8 * (dw - reg.offset)
    return f"{reg.name}[{low + 31}:{low}]"


# The address bits a decoder must look at, per space.  Memory: the request's whole 64-bit
# address (PCIe Base Spec 4.0, 2.2.4.1: 64-bit address routing).  I/O: x86's 16-bit port
# numbers (the 64 KiB I/O space QEMU's pc machine has; PCIe I/O requests carry 32 bits,
# 2.2.4.1, but no x86 host can issue more than 16).  Config: the 12-bit register offset of
# a function's 4 KiB extended configuration space (PCIe Base Spec 4.0, 2.2.7: Extended
# Register Number and Register Number; 7.2.2: ECAM).  Bits 0-1 of a byte address are the
# request's first enabled byte lane (`split_access`), as a host encodes them.
ADDR_BITS: dict[Space, int] = {Space.MEM: REQUEST_FIELDS["addr"], Space.IO: 16, Space.CFG: 12}


def byte_address(addr: int, be: int) -> int:
    """The byte address a request's DW address and byte enables stand for: that of its
    first enabled byte (the DW itself when no byte is enabled)."""
    return addr | ((be & -be).bit_length() - 1 if be else 0)


@cache
def claimed_bytes(space: Space, bar0: int = 0) -> Mapping[int, str]:
    """What the register map says the device claims in `space`, by byte address -> name:
    each register DW of BAR0 at `bar0`, the debugcon port, each implemented config DW.
    (Every config offset completes successfully; the implemented DWs are the ones an
    alias would show.)  Read-only: it is cached per BAR0 base, as coverage asks per request."""
    if space is Space.MEM:
        claimed = {bar0 + dw: dword_name(reg, dw) for reg in RNG_REGISTERS for dw in reg.dwords}
    elif space is Space.IO:
        claimed = {DEBUGCON_PORT: "debugcon"}
    else:
        claimed = {off: cd.name for off, cd in CONFIG_DWORDS.items()}
    return MappingProxyType(claimed)


def _be_bins(prefix: str) -> list[str]:
    return [f"{prefix}/{be.bit_count()}B/be{be:04b}" for be in BE_PATTERNS]


COVERPOINTS: dict[str, tuple[str, ...]] = {
    "kind": tuple(k.name for k in Kind),
    # RNG register DWs x direction x access size x byte-enable pattern.
    "rng_access": tuple(
        b for reg in RNG_REGISTERS for dw in reg.dwords for d in ("R", "W")
        for b in _be_bins(f"{dword_name(reg, dw)}/{d}")
    ),
    # RNG64 as software uses it: 8-byte reads (its low DW read then at once its high DW),
    # either DW read alone, a read racing a seeding, and the CAPS read advertising it.
    "rng64": ("read8", "low_alone", "high_alone", "during_seeding", "caps_read"),
    "unused_offset": ("R", "W"),
    "config_dword": tuple(
        f"{cd.name}/{d}" for cd in CONFIG_DWORDS.values() for d in ("R", "W")
    ) + ("unimplemented/R", "unimplemented/W"),
    "unsupported": ("mem_command_clear", "mem_outside_bar", "io_other_port",
                    "io_lane_not_enabled", "posted_dropped"),
    "seed_class": ("zero", "one", "bit31", "max_positive", "other"),
    "read_during_seeding": ("hit",),
    "debugcon": ("read", "write", "write_stalled"),
    "reset_mid_stream": ("pending_completion", "console_backlog", "seeding"),
    # The DMA engine's scenarios (tb.dma_program's cases, a refused page, a reset in the
    # middle of a transfer) and the requester-side timings they ran under (tb.cases_dma).
    "dma_case": tuple(DMA_CASES) + ("refused_page", "reset_mid_transfer"),
    "dma_timing": ("no_stall", "mreq_backpressure", "mcpl_latency", "both"),
}


def _decode_coverpoints() -> dict[str, tuple[str, ...]]:
    """Address decode, per space (`ADDR_BITS`): `addr_bit_SPACE` -- each bit of the byte
    address seen set and seen clear in a checked request; `alias_SPACE` -- for each
    claimed byte address C (`claimed_bytes`), a read and a write at C with bit N inverted
    (bits 0-1: another byte lane of C's DW), and at each byte lane of C's DW alone: where
    a decoder that ignores bit N (or a lane) would answer, or write, as C."""
    points = {}
    for space, width in ADDR_BITS.items():
        s = space.name.lower()
        points[f"addr_bit_{s}"] = tuple(
            f"b{n}/{state}" for n in range(width) for state in ("set", "clear"))
        probes = (*(f"b{n}" for n in range(width)), *(f"lane{i}" for i in range(4)))
        points[f"alias_{s}"] = tuple(f"{name}/{probe}/{d}"
                                     for name in claimed_bytes(space).values()
                                     for probe in probes for d in ("R", "W"))
    return points


COVERPOINTS.update(_decode_coverpoints())


def seed_class(seed: int) -> str:
    """The class of a SEED value that glibc treats specially (or not)."""
    if seed == 0:
        return "zero"  # glibc seeds with 1 instead
    if seed == 1:
        return "one"
    if seed & 0x8000_0000:
        return "bit31"  # a negative int32 in glibc's LCG
    if seed == 0x7FFF_FFFF:
        return "max_positive"  # the LCG modulus itself: r[1] = 0
    return "other"


class CoverageDb:
    """Hit counts per coverpoint and bin."""

    def __init__(self) -> None:
        self.hits: dict[str, dict[str, int]] = {cp: dict.fromkeys(bins, 0)
                                                for cp, bins in COVERPOINTS.items()}

    def hit(self, coverpoint: str, bin_: str) -> None:
        bins = self.hits.get(coverpoint)
        if bins is None or bin_ not in bins:
            raise KeyError(f"no coverage bin {coverpoint}/{bin_}")
        bins[bin_] += 1

    def missing(self, coverpoint: str) -> list[str]:
        return [b for b, n in self.hits[coverpoint].items() if n == 0]

    def complete(self, coverpoint: str) -> bool:
        return not self.missing(coverpoint)

    def merge(self, other: CoverageDb) -> None:
        for cp, bins in other.hits.items():
            for b, n in bins.items():
                if cp in self.hits and b in self.hits[cp]:
                    self.hits[cp][b] += n

    def report(self, required: Iterable[str] = ()) -> list[str]:
        """One line per coverpoint: bins hit / total, REQUIRED when it must be complete."""
        required = set(required)
        lines = []
        for cp, bins in self.hits.items():
            hit = sum(1 for n in bins.values() if n)
            miss = self.missing(cp)
            tag = " (required)" if cp in required else ""
            state = "complete" if not miss else "MISSING " + ", ".join(miss[:8]) + (
                f" (+{len(miss) - 8} more)" if len(miss) > 8 else "")
            lines.append(f"{cp:<20} {hit:3d}/{len(bins):<3d} {state}{tag}")
        return lines

    def unmet(self, required: Iterable[str]) -> list[str]:
        return [cp for cp in required if not self.complete(cp)]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.hits, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> CoverageDb:
        db = cls()
        other = cls()
        other.hits = json.loads(path.read_text())
        db.merge(other)
        return db
