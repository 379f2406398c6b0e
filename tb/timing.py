"""Bus timing patterns: idle-cycle inserters for sources, back-pressure for sinks.

A pattern is an endless iterator of booleans, one per clock cycle: True means "pause this
cycle" (a source keeps `valid` low, a sink keeps `ready` low).  This is the convention of
cocotbext-axi's tests (`cycle_pause()` = `itertools.cycle([1, 1, 1, 0])`), so a test can be
run under several timings by parametrising over pattern names.

Patterns are named so that tests, coverage and the regression log can say which timing a
run used; `make_pattern(name, seed)` builds a fresh iterator (they are stateful).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator

__all__ = ["PATTERNS", "Pattern", "make_pattern"]

Pattern = Iterator[bool]


def _never(_seed: int) -> Pattern:
    return itertools.repeat(False)


def _cycle_pause(_seed: int) -> Pattern:
    # Three cycles paused, one free: a long, regular stall.
    return itertools.cycle([True, True, True, False])


def _alternate(_seed: int) -> Pattern:
    return itertools.cycle([True, False])


def _random(seed: int) -> Pattern:
    rng = random.Random(seed)
    while True:
        yield rng.random() < 0.5


def _bursty(seed: int) -> Pattern:
    """Long free runs and long stalls: fills FIFOs completely, then drains them."""
    rng = random.Random(seed)
    while True:
        yield from itertools.repeat(False, rng.randrange(1, 40))
        yield from itertools.repeat(True, rng.randrange(1, 80))


PATTERNS: dict[str, Callable[[int], Pattern]] = {
    "none": _never,
    "cycle": _cycle_pause,
    "alternate": _alternate,
    "random": _random,
    "bursty": _bursty,
}


def make_pattern(name: str | None, seed: int = 0) -> Pattern | None:
    """A fresh pattern iterator by name; None or "none" gives None (never pause)."""
    if name is None or name == "none":
        return None
    try:
        factory = PATTERNS[name]
    except KeyError:
        raise ValueError(
            f"Unknown timing pattern {name!r}; known: {', '.join(sorted(PATTERNS))}"
        ) from None
    return factory(seed)
