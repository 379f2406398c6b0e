"""Hostile x-pci-proxy-dev input against the device server (model backend), driven by
hypothesis through the engine of bench/robustness/fuzz_bridge.py: every bad stream is rejected with
one clear ProtocolError, nothing hangs or leaks an fd, and the device state seen by the
next connection is exactly the shadow model's (RNG sequence, BAR0, COMMAND, identity).
The >= 100000-input run is `python -m bench.robustness.fuzz_bridge` (in `make robustness`)."""

from __future__ import annotations

import array
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qbridge.childenv import child_env

from bench.robustness import fuzz_bridge as fz
from models.contract.layout import REPO as ROOT

FUZZ_SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzzer() -> Iterator[fz.Fuzzer]:
    """One server-side Device for the whole module: state carries across inputs."""
    fz.install_watchdog()
    f = fz.Fuzzer()
    yield f
    f.close()


def _check(fuzzer: fz.Fuzzer, inp: fz.Input) -> fz.Outcome:
    out = fuzzer.run(inp)
    assert out.failure is None, f"{inp.category} input {inp.chunks!r}: {out.failure}"
    return out


@FUZZ_SETTINGS
@given(category=st.sampled_from([c for c in fz.CATEGORIES if c != "stalled"]),
       seed=st.integers(0, 2**32 - 1))
def test_each_bad_input_category_is_rejected_and_state_continues_as_the_model(
        fuzzer: fz.Fuzzer, category: str, seed: int) -> None:
    out = _check(fuzzer, fz.make_input(random.Random(seed), category))
    if category != "clean-close" and category != "mutated":
        assert out.error, f"{category}: the server accepted a stream the oracle rejects"


@FUZZ_SETTINGS
@given(data=st.binary(min_size=1, max_size=400), nfds=st.integers(0, 3),
       seed=st.integers(0, 2**32 - 1))
def test_arbitrary_bytes_after_valid_traffic_never_crash_hang_or_corrupt_state(
        fuzzer: fz.Fuzzer, data: bytes, nfds: int, seed: int) -> None:
    rnd = random.Random(seed)
    ops = fz.PROBE + [fz.random_valid_op(rnd) for _ in range(rnd.randint(0, 3))]
    _check(fuzzer, fz.Input([fz.encode(op) for op in ops] + [fz.Chunk(data, nfds)], "bytes"))


def test_peer_stalling_mid_message_is_rejected_within_the_message_timeout(
        fuzzer: fz.Fuzzer) -> None:
    for seed in range(3):
        out = _check(fuzzer, fz.make_input(random.Random(seed), "stalled"))
        assert out.error and "stalled" in out.error, f"stall reported as {out.error!r}"


def test_the_fuzz_oracle_notices_a_device_out_of_step_with_the_model() -> None:
    """Teeth: one extra RNG step on the server's device must fail the next input."""
    fz.install_watchdog()
    f = fz.Fuzzer()
    try:
        assert f.run(fz.make_input(random.Random(1), "clean-close")).failure is None
        f.device.rng.read(0)
        out = f.run(fz.make_input(random.Random(2), "unknown-cmd"))
    finally:
        f.close()
    assert out.failure and "the model says" in out.failure, f"not noticed: {out.failure}"


@pytest.mark.parametrize("category", ["random-bytes", "oversize", "wrong-fds",
                                      "closed-mid-message", "bad-fields"])
def test_cli_rejects_bad_input_with_one_line_and_no_traceback(tmp_path: Path,
                                                              category: str) -> None:
    """The server process as the launcher runs it: exit 1, one clear stderr line."""
    inp = fz.make_input(random.Random(7), category)
    verdict = fz.classify(inp.chunks)
    assert verdict.error is not None, f"seed 7 gave a valid {category} stream"
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qbridge.server", "--backend", "model", "--transport-fd",
         str(theirs.fileno()), "--capture", str(tmp_path / "cap"), "--log",
         str(tmp_path / "server.log")],
        pass_fds=(theirs.fileno(),), cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True)
    theirs.close()
    try:
        for chunk in inp.chunks:
            fds = [os.eventfd(0) for _ in range(chunk.nfds)]
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            ours.sendmsg([chunk.data], anc)
            for fd in fds:
                os.close(fd)
        ours.shutdown(socket.SHUT_WR)
        _, err = proc.communicate(timeout=30)
    finally:
        ours.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, f"{category}: exit status {proc.returncode}, stderr {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qbridge.server: ERROR: protocol error:"), \
        f"{category}: stderr is not one clear line: {err!r}"
    assert "Traceback" not in (tmp_path / "server.log").read_text(), \
        f"{category}: a traceback in the server log"
