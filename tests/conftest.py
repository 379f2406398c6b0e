"""Shared fixtures for tests/: the independent RNG oracle is glibc itself, through ctypes;
the model-backend sign-off boot, run once per session and recorded (qbridge.record)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from qbridge.launch import RunResult, Timeouts
from qbridge.signoff import Check, run_signoff

from models.glibc_oracle import glibc_sequence


@pytest.fixture
def glibc() -> Callable[[int, int], list[int]]:
    return glibc_sequence


@dataclass(frozen=True)
class RecordedSignoff:
    res: RunResult
    checks: list[Check]
    record: Path


@pytest.fixture(scope="session")
def recorded_model_signoff(tmp_path_factory: pytest.TempPathFactory) -> RecordedSignoff:
    """The model-backend sign-off over proxy (QEMU 7.2), booted once for every test that
    needs it: tests/test_signoff.py judges it, tests/test_record_replay.py replays the
    record of its traffic."""
    out = tmp_path_factory.mktemp("vm-model-proxy")
    record = out / "signoff.rec"
    res, checks = run_signoff("model", "icarus", waves=False, out=out / "vm-model-icarus",
                              timeouts=Timeouts(server_ready=300.0, run=480.0),
                              progress=False, transport="proxy", record=record)
    return RecordedSignoff(res, checks, record)
