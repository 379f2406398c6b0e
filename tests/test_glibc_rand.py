"""The Python generator (models/glibc_rand.py) equals glibc's srand()/rand() bit for bit."""

from __future__ import annotations

import random

from models.glibc_oracle import glibc_sequence
from models.glibc_rand import GlibcRand

EDGE_SEEDS = [0, 1, 2, 0x7FFF_FFFE, 0x7FFF_FFFF, 0x8000_0000, 0x8000_0001, 0xFFFF_FFFE,
              0xFFFF_FFFF]


def test_model_matches_glibc_over_1000_seeds_including_edges() -> None:
    rnd = random.Random(20261121)
    seeds = EDGE_SEEDS + [rnd.getrandbits(32) for _ in range(1000)]
    for seed in seeds:
        expected = glibc_sequence(seed, 120)
        gen = GlibcRand(seed)
        got = [gen.next() for _ in range(120)]
        assert got == expected, f"seed {seed:#x}: model {got[:4]}... != glibc {expected[:4]}..."


def test_seed_zero_is_seed_one_as_in_glibc() -> None:
    a, b = GlibcRand(0), GlibcRand(1)
    assert [a.next() for _ in range(50)] == [b.next() for _ in range(50)]
    assert glibc_sequence(0, 50) == glibc_sequence(1, 50)


def test_default_state_is_srand_1() -> None:
    gen = GlibcRand()
    assert [gen.next() for _ in range(20)] == glibc_sequence(1, 20)


def test_reseeding_mid_stream_restarts_the_sequence() -> None:
    gen = GlibcRand(5)
    for _ in range(17):
        gen.next()
    gen.seed(0x8000_0000)
    assert [gen.next() for _ in range(100)] == glibc_sequence(0x8000_0000, 100)


def test_seed_out_of_range_is_refused_with_the_value() -> None:
    for bad in (-1, 1 << 32):
        try:
            GlibcRand(bad)
        except ValueError as e:
            assert repr(bad) in str(e)
        else:
            raise AssertionError(f"seed {bad} accepted")
