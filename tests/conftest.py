"""Shared fixtures for tests/: the independent RNG oracle is glibc itself, through ctypes."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import pytest

_libc = ctypes.CDLL("libc.so.6")
_libc.srand.argtypes = [ctypes.c_uint]
_libc.rand.restype = ctypes.c_int


def glibc_sequence(seed: int, count: int) -> list[int]:
    """What glibc's srand(seed) then `count` rand() calls return on this host."""
    _libc.srand(seed)
    return [_libc.rand() for _ in range(count)]


@pytest.fixture
def glibc() -> Callable[[int, int], list[int]]:
    return glibc_sequence
