"""Shared fixtures for tests/: the independent RNG oracle is glibc itself, through ctypes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from models.glibc_oracle import glibc_sequence


@pytest.fixture
def glibc() -> Callable[[int, int], list[int]]:
    return glibc_sequence
