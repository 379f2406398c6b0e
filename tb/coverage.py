"""Functional coverage model: coverpoints, their bins, and the report.  Pure Python.

The bins are derived from the interface definitions (kinds, the register map, config
space, the byte-enable patterns `Host` can produce), so a register added to the map is a
new bin nobody can forget.  `tb.uvm_coverage.Coverage` fills a `CoverageDb` from what the
monitors saw; `tb.regression` merges the per-test databases and prints the same report.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from models.contract.regmap import CONFIG_DWORDS, RNG_REGISTERS, Register
from models.contract.transaction import Kind, split_access

__all__ = ["BE_PATTERNS", "COVERPOINTS", "CoverageDb", "dword_name", "seed_class"]

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
}


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
