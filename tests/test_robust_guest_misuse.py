"""Guest misbehaviour through the bridge (bench/robustness/guest_misuse.py): every access size at
the corners of BAR0 and past it, unaligned, memory disabled, other I/O ports, config
writes to read-only fields -- replies equal the model's, the identity is intact and the
RNG, re-seeded, gives glibc's numbers; on the model and on the RTL (both simulators).
The exhaustive sweep (every offset, every port) is in `make robustness`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.robustness import guest_misuse as gm


def test_model_backend_stays_consistent_under_guest_misuse() -> None:
    report = gm.run_model(gm.sweep(exhaustive=False) + gm.checks())
    assert report.accesses > 1000, f"only {report.accesses} accesses"
    assert not report.mismatches, "\n".join(report.mismatches[:10])


def test_a_device_out_of_step_with_the_model_is_caught() -> None:
    """Teeth: a model whose generator took one extra step must fail the sweep."""
    report = gm.run_model(gm.sweep(exhaustive=False) + gm.checks(),
                          sabotage=lambda dev: dev.rng.read(0))
    assert report.mismatches, "a desynchronised RNG went unnoticed"


def test_identity_check_uses_the_register_map_not_the_model() -> None:
    report = gm.Report("x")
    replies = [0] * (len(gm.checks()) - len(gm.ENABLE))
    gm.check_invariants(replies, report)
    assert any("vendor/device" in m for m in report.mismatches), report.mismatches
    assert any("glibc" in m for m in report.mismatches), report.mismatches


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_rtl_backend_stays_consistent_under_guest_misuse(tmp_path: Path, sim: str) -> None:
    report = gm.run_rtl(gm.sweep(exhaustive=False) + gm.checks(), sim, tmp_path)
    assert report.accesses > 1000, f"only {report.accesses} accesses"
    assert not report.mismatches, "\n".join(report.mismatches[:10])
