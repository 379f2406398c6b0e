"""glibc's srand()/rand(): the TYPE_3 additive feedback generator, written once in Python.

Ref: glibc stdlib/random_r.c (__srandom_r, __random_r) with the default state of
stdlib/random.c: TYPE_3, degree 31, separation 3.

    r[0]   = seed (seed 0 is taken as 1), r[0] interpreted as int32
    r[i]   = (16807 * r[i-1]) mod 2147483647  for i = 1..30   (Schrage's method in C,
             which for a negative int32 r[0] still yields the mathematical residue)
    r[i]   = r[i-31]                              for i = 31..33  (the ring buffer:
             the front pointer starts 3 words ahead of the rear one, so its first
             three additions read the seeding words themselves)
    r[i]   = r[i-3] + r[i-31] (mod 2^32)          for i >= 34, output r[i] >> 1,
    with the first 310 outputs discarded (rand() number k is r[k + 344] >> 1).

The RTL implements the same recurrence in hardware; glibc itself (through ctypes) is the
independent oracle that both are tested against.
"""

from __future__ import annotations

from models.contract.glibc_type3 import DEGREE, DISCARD, MODULUS, MULTIPLIER, SEPARATION

__all__ = ["DEGREE", "DISCARD", "MODULUS", "SEPARATION", "GlibcRand", "lcg_step"]



def lcg_step(word: int) -> int:
    """One step of the seeding LCG: (16807 * word) mod (2^31 - 1), `word` a signed int32."""
    return (MULTIPLIER * word) % MODULUS


def _signed32(x: int) -> int:
    return x - (1 << 32) if x & 0x8000_0000 else x


class GlibcRand:
    """A generator with glibc's sequence.  `GlibcRand(s).next()` == first rand() after srand(s)."""

    def __init__(self, seed: int = 1) -> None:
        self.seed(seed)

    def seed(self, seed: int) -> None:
        if not 0 <= seed <= 0xFFFF_FFFF:
            raise ValueError(f"Seed must be an unsigned 32-bit value, not {seed!r}")
        if seed == 0:
            seed = 1
        word = _signed32(seed)
        state = [seed]
        for _ in range(1, DEGREE):
            word = lcg_step(word)
            state.append(word)
        self._state = state
        self._rear = 0
        for _ in range(DISCARD):
            self.next()

    def next(self) -> int:
        """Advance once and return the 31-bit number rand() would return."""
        front = (self._rear + SEPARATION) % DEGREE
        val = (self._state[front] + self._state[self._rear]) & 0xFFFF_FFFF
        self._state[front] = val
        self._rear = (self._rear + 1) % DEGREE
        return val >> 1
