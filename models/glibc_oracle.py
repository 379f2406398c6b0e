"""The independent RNG oracle: the host's glibc itself, through ctypes.

The model, the RTL, the bridge and the sign-off are all checked against this, not only
against `models.glibc_rand`: a misreading of glibc shared by model and RTL would otherwise
go unnoticed.  Pure Python (no cocotb), so every layer may import it.
"""

from __future__ import annotations

import ctypes

__all__ = ["glibc_sequence"]

_libc = ctypes.CDLL("libc.so.6")
_libc.srand.argtypes = [ctypes.c_uint]
_libc.srand.restype = None
_libc.rand.argtypes = []
_libc.rand.restype = ctypes.c_int


def glibc_sequence(seed: int, count: int) -> list[int]:
    """What glibc's `srand(seed)` then `count` calls of `rand()` return on this host."""
    if not 0 <= seed <= 0xFFFF_FFFF:
        raise ValueError(f"Seed must be an unsigned 32-bit value, not {seed!r}")
    _libc.srand(seed)
    return [_libc.rand() for _ in range(count)]
