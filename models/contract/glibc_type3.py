"""The generator the RNG device must reproduce: glibc's TYPE_3 parameters, defined once.

Ref: glibc stdlib/random_r.c (__srandom_r, __random_r) with the default state of
stdlib/random.c.  The RTL (`rtl.rng`) builds its hardware from these numbers and the
golden model (`models.glibc_rand`) its Python generator; glibc itself, through ctypes, is
the independent oracle both are tested against.
"""

from __future__ import annotations

__all__ = ["DEGREE", "DISCARD", "MODULUS", "MULTIPLIER", "SEPARATION"]

DEGREE = 31  # rand_deg of TYPE_3
SEPARATION = 3  # rand_sep of TYPE_3: the front pointer leads the rear by 3
DISCARD = 10 * DEGREE  # srandom_r discards 310 outputs to warm the state up
MODULUS = 2**31 - 1
MULTIPLIER = 16807
