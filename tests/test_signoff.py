"""The VM sign-off on every backend, with the same kernel modules, and its judge.

The boots: `qbridge.signoff.run_signoff` on the model backend and on the RTL backend
simulated by Icarus and by Verilator, over both transports (x-pci-proxy-dev on the host's
QEMU 7.2, vfio-user on QEMU 11.1 from the project's chroot).  The modules are built once
(qbridge.image caches them) and must be byte-identical for all six: the drivers are
unchanged between backends and transports.  The judge (`evaluate`) is also tested
without a boot, on made-up runs, to show that each kind of wrong result fails it.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from qbridge import image
from qbridge.launch import Component, RunResult, Timeouts
from qbridge.signoff import (
    DEBUGCON_TEXT,
    HWRNG_BYTES,
    HWRNG_PATH_RNG,
    HWRNG_PATH_RNG64,
    NUMBERS,
    STEPS,
    Check,
    evaluate,
    glibc_sequence,
    run_signoff,
)

_FIRST_KO_DIGESTS: dict[str, str] = {}


def _ko_digests() -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest()
            for name, path in image.modules().items()}


def _failures(checks: list[Check]) -> str:
    return "\n".join(f"  {c.name}: {c.detail}" for c in checks if not c.passed)


@pytest.mark.parametrize("transport", ["proxy", "vfio-user"])
@pytest.mark.parametrize(("backend", "sim"), [("model", "icarus"), ("rtl", "icarus"),
                                              ("rtl", "verilator")],
                         ids=["model", "rtl-icarus", "rtl-verilator"])
def test_signoff_passes_with_the_same_modules(tmp_path: Path, backend: str, sim: str,
                                              transport: str,
                                              request: pytest.FixtureRequest) -> None:
    digests = _ko_digests()
    _FIRST_KO_DIGESTS.setdefault("ko", repr(digests))
    assert repr(digests) == _FIRST_KO_DIGESTS["ko"], \
        "the kernel modules differ between backends"
    # A cold Verilator build counts towards server_ready and run; a hung simulator (the
    # vCPU waits for it forever) ends at the run timeout.
    if (backend, transport) == ("model", "proxy"):  # the session's boot, also recorded
        shared = request.getfixturevalue("recorded_model_signoff")
        res, checks = shared.res, shared.checks
    else:
        res, checks = run_signoff(backend, sim, waves=False,
                                  out=tmp_path / f"vm-{backend}-{sim}",
                                  timeouts=Timeouts(server_ready=300.0, run=480.0),
                                  progress=False, transport=transport)
    assert res.transport == transport, res.transport
    want_qemu = "version 11.1" if transport == "vfio-user" else "version 7.2"
    assert want_qemu in res.qemu_version, f"{transport} ran {res.qemu_version!r}"
    assert all(c.passed for c in checks), (
        f"sign-off on {transport}/{backend}/{sim} failed:\n{_failures(checks)}\n"
        f"serial log tail:\n" + "\n".join(res.serial_lines[-25:]))
    assert _ko_digests() == digests, "the kernel modules were rebuilt during the run"


# The judge, on synthetic runs -------------------------------------------------------


def _good_serial() -> list[str]:
    seq = glibc_sequence(0, NUMBERS + HWRNG_BYTES // 4)
    lines = ["COSIM-BEGIN"]
    for step in STEPS:
        if step == "rng_ref":
            lines += [f"Round {r} number {i}: {seq[i]}" for r in range(2) for i in range(NUMBERS)]
        if step == "hwrng":
            raw = struct.pack(f"<{HWRNG_BYTES // 4}I", *seq[NUMBERS:])
            lines.append(f"HWRNG-HEX {raw.hex()}")
            lines.append(f"HWRNG-PATH {HWRNG_PATH_RNG64}")
        lines.append(f"STEP {step} PASS")
    return [*lines, "COSIM-END rc=0"]


def _run(tmp_path: Path, serial: list[str], capture: bytes = DEBUGCON_TEXT,
         failed: Component | None = None) -> RunResult:
    (tmp_path / "debugcon.bin").write_bytes(capture)
    return RunResult(
        ok=failed is None, guest_rc=0 if failed is None else None, failed=failed,
        reason="" if failed is None else "made up", serial="\n".join(serial) + "\n",
        elapsed=1.0, out=tmp_path, serial_log=tmp_path / "serial.log",
        capture=tmp_path / "debugcon.bin", server_log=tmp_path / "server.log",
        server_stderr=tmp_path / "server.stderr", qemu_log=tmp_path / "qemu.log",
        txlog=tmp_path / "txlog.txt",
    )


def _failed_names(checks: list[Check]) -> set[str]:
    return {c.name for c in checks if not c.passed}


def test_judge_passes_a_correct_run(tmp_path: Path) -> None:
    checks = evaluate(_run(tmp_path, _good_serial()))
    assert not _failed_names(checks), f"a correct run failed:\n{_failures(checks)}"


def test_judge_fails_a_wrong_number(tmp_path: Path) -> None:
    serial = [ln.replace(": 846930886", ": 846930887") if ln.startswith("Round 1") else ln
              for ln in _good_serial()]
    failed = _failed_names(evaluate(_run(tmp_path, serial)))
    assert failed == {"rng_ref round 1 == glibc srand(0)", "rng_ref rounds identical"}, failed


def test_judge_fails_a_missing_step_and_a_failed_misuse_check(tmp_path: Path) -> None:
    serial = [ln for ln in _good_serial() if ln != "STEP rmmod_debugcon PASS"]
    serial.insert(3, "CHECK debugcon_second_open FAIL second open succeeded")
    failed = _failed_names(evaluate(_run(tmp_path, serial)))
    assert failed == {"guest rmmod_debugcon", "misuse debugcon_second_open"}, failed


def test_judge_fails_a_capture_with_extra_or_missing_bytes(tmp_path: Path) -> None:
    for capture in (DEBUGCON_TEXT + b"x", DEBUGCON_TEXT[:-1], b""):
        failed = _failed_names(evaluate(_run(tmp_path, _good_serial(), capture=capture)))
        assert failed == {"debugcon capture == written"}, (capture, failed)


def test_judge_fails_wrong_hwrng_bytes(tmp_path: Path) -> None:
    serial = [ln[:-2] + "00" if ln.startswith("HWRNG-HEX") else ln for ln in _good_serial()]
    failed = _failed_names(evaluate(_run(tmp_path, serial)))
    assert failed == {"hwrng bytes == glibc sequence"}, failed


def test_judge_fails_the_4_byte_hwrng_path_when_caps_advertises_rng64(tmp_path: Path) -> None:
    for path in (HWRNG_PATH_RNG, ""):
        serial = [f"HWRNG-PATH {path}" if ln.startswith("HWRNG-PATH") else ln
                  for ln in _good_serial()]
        failed = _failed_names(evaluate(_run(tmp_path, serial)))
        assert failed == {"hwrng path as CAPS advertises"}, (path, failed)


def test_judge_fails_a_component_failure_even_with_good_output(tmp_path: Path) -> None:
    failed = _failed_names(evaluate(_run(tmp_path, _good_serial(), failed=Component.SERVER)))
    assert failed == {"run (server, QEMU, kernel)"}, failed
