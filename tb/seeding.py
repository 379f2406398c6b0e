"""The run's seed: chosen once, printed, settable, and the only source of randomness.

A regression run (`make sim`, `pytest tb`) has one seed.  It is passed to cocotb as
COCOTB_RANDOM_SEED; cocotb reseeds Python's `random` before each test from that seed and
the test's full name, and every random decision of the testbench draws from `random` or
from a `random.Random` seeded by it.  So one seed reproduces every test's stimulus, alone
or in the whole suite, on either simulator.  Pure Python (no cocotb import): the
regression runner and pytest choose the seed before any simulator starts.
"""

from __future__ import annotations

import os

__all__ = ["SEED_ENV", "SEED_LIMIT", "choose_seed", "parse_seed"]

SEED_ENV = "COSIM_SEED"  # the environment's way to set it (make sim SEED=, CI reruns)
SEED_LIMIT = 1 << 32  # cocotb keeps the seed in a C int where simulators pass it on


def parse_seed(text: str, what: str) -> int:
    """A seed from text (decimal or 0x...), or ValueError naming `what` gave it."""
    try:
        seed = int(text, 0)
    except ValueError:
        raise ValueError(f"{what} must be an integer, not {text!r}") from None
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{what} must be in 0..{SEED_LIMIT - 1}, not {seed}")
    return seed


def choose_seed(explicit: int | None = None) -> int:
    """The given seed, else $COSIM_SEED, else a fresh one from the OS."""
    if explicit is not None:
        if not 0 <= explicit < SEED_LIMIT:
            raise ValueError(f"the seed must be in 0..{SEED_LIMIT - 1}, not {explicit}")
        return explicit
    env = os.environ.get(SEED_ENV, "").strip()
    if env:
        return parse_seed(env, SEED_ENV)
    return int.from_bytes(os.urandom(4), "little")
