"""The independent RNG oracle: the host's glibc itself, through ctypes.

The RTL is checked against this, not only against `models.glibc_rand` (which is itself
tested against glibc in tests/): a shared misreading of glibc in model and RTL would
otherwise go unnoticed.
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
