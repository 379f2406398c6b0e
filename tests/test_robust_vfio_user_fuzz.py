"""Hostile vfio-user input against the device server (model backend), driven by hypothesis
through the engine of bench/robustness/fuzz_vfio_user.py: every reply and error reply is the
oracle's, every bad stream that cannot go on ends with one clear ProtocolError, nothing
hangs or leaks an fd, trigger eventfds are signalled as the IRQ model says, and the device
state seen by the next connection is exactly the shadow model's (RNG sequence, BAR0,
COMMAND, identity).  The >= 100000-input run is `python -m bench.robustness.fuzz_vfio_user`
(in `make robustness`)."""

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
from qbridge.vfio_user import transport as vfio_transport

from bench.robustness import fuzz_vfio_user as fz
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
def test_each_input_category_gets_the_oracles_answers_and_state_continues_as_the_model(
        fuzzer: fz.Fuzzer, category: str, seed: int) -> None:
    out = _check(fuzzer, fz.make_input(random.Random(seed), category))
    if category in ("truncated-header", "bad-msg-size", "closed-mid-message"):
        assert out.error, f"{category}: the server went on after a framing error"


@FUZZ_SETTINGS
@given(data=st.binary(min_size=1, max_size=400),
       fds=st.lists(st.sampled_from(fz.FD_KINDS), max_size=3),
       seed=st.integers(0, 2**32 - 1), more=st.booleans())
def test_arbitrary_bytes_after_valid_traffic_never_crash_hang_leak_or_corrupt_state(
        fuzzer: fz.Fuzzer, data: bytes, fds: list[str], seed: int, more: bool) -> None:
    g = fz.Gen(random.Random(seed))
    chunks = g.probe() + [g.valid() for _ in range(g.rnd.randint(0, 4))]
    chunks.append(fz.Chunk(data, tuple(fds)))
    if more:  # valid traffic after the bytes: framed as whatever the bytes left it
        chunks += [g.valid(), g.read(fz.BAR0_REGION, 0, 4)]
    _check(fuzzer, fz.Input(chunks, "bytes"))


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
    assert out.failure and "the oracle says" in out.failure, f"not noticed: {out.failure}"


async def _stale_bar0(self: vfio_transport.VfioUserTransport, core: object) -> None:
    """Planted: the BAR0 shadow never follows the device's register."""


def _no_signal(fd: int) -> None:
    """Planted: triggers signal nothing."""


def _keep_irq_fds(self: vfio_transport.VfioUserTransport) -> None:
    """Planted: at disconnection the IRQ eventfds are not closed (the DMA maps are)."""
    for region in self.dma:
        region.release()
    self.dma.clear()


def _silent_refusal(self: vfio_transport.VfioUserTransport, msg: object, err: int,
                    reason: str) -> None:
    """Planted: a refused message is answered and its fds closed, but no line is logged."""
    vfio_transport.close_fds([fd for fd in msg.fds if fd >= 0])  # type: ignore[attr-defined]
    if not msg.flags & fz.NO_REPLY:  # type: ignore[attr-defined]
        self.sock.send(fz.HDR.pack(msg.msg_id, msg.cmd, 16,  # type: ignore[attr-defined]
                                   fz.REPLY | fz.ERROR, err))


@pytest.mark.parametrize("target, name, plant, symptom", [
    (vfio_transport.VfioUserTransport, "_refresh_bar0", _stale_bar0, "the oracle says"),
    (vfio_transport, "_signal", _no_signal, "signalled 0 times"),
    (vfio_transport.VfioUserTransport, "close", _keep_irq_fds, "fd leak"),
    (vfio_transport.VfioUserTransport, "_refuse", _silent_refusal, "warning lines"),
], ids=["stale-bar0-shadow", "trigger-signals-nothing", "irq-fds-kept", "silent-refusal"])
def test_the_fuzz_target_fails_on_a_planted_server_bug(
        monkeypatch: pytest.MonkeyPatch, target: object, name: str, plant: object,
        symptom: str) -> None:
    """Teeth: each planted bug makes an input of a fixed seed fail, with its symptom."""
    monkeypatch.setattr(target, name, plant)
    fz.install_watchdog()
    f = fz.Fuzzer()
    rnd = random.Random(5)
    try:
        for _ in range(500):
            out = f.run(fz.make_input(rnd))
            if out.failure is not None:
                break
    finally:
        f.close()
    assert out.failure is not None, f"{name}: the planted bug went unnoticed in 500 inputs"
    assert symptom in out.failure, f"{name}: noticed as {out.failure!r}"


@pytest.mark.parametrize("category", ["truncated-header", "bad-msg-size",
                                      "closed-mid-message"])
def test_cli_ends_a_broken_stream_with_one_line_and_no_traceback(tmp_path: Path,
                                                                 category: str) -> None:
    """The server process as the launcher runs it: exit 1, one clear stderr line."""
    inp = fz.make_input(random.Random(7), category, valid=0)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qbridge.server", "--backend", "model", "--transport",
         "vfio-user", "--transport-fd", str(theirs.fileno()), "--capture",
         str(tmp_path / "cap"), "--log", str(tmp_path / "server.log")],
        pass_fds=(theirs.fileno(),), cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    theirs.close()
    fds: list[int] = []
    try:
        for chunk in inp.chunks:
            fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in chunk.fds]
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
