"""Whole-VM robustness, small versions of `make robustness` (bench/robustness/vm_load.py,
bench/robustness/vm_faults.py): a debugcon stream arrives byte-exact in the RTL capture, parallel
ioctl users get exactly glibc's next numbers, insmod/rmmod cycles leak nothing and warn
nothing; the simulator and QEMU killed at random points of a run each end it in bounded
time, named, with artifacts kept and no process left behind."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench.robustness import vm_faults, vm_load
from models.glibc_oracle import glibc_sequence


def test_rtl_vm_streams_debugcon_exactly_serves_parallel_ioctls_and_cycles_cleanly(
        tmp_path: Path) -> None:
    r = vm_load.run(tmp_path, "rtl", "verilator", debugcon_bytes=16 << 10, procs=4,
                    ioctls=50, cycles=10, timeout=600.0)
    assert r.ok, "\n".join(r.problems)
    assert (r.bytes_streamed, r.bytes_lost) == (16 << 10, 0), f"{r.bytes_streamed} bytes"
    assert (r.ioctls, r.numbers_lost, r.cycles) == (200, 0, 10), r


def test_the_load_check_notices_a_lost_byte_and_a_lost_number(tmp_path: Path) -> None:
    """Teeth for the check above, on a fabricated run."""
    from qbridge.launch import RunResult

    out = tmp_path
    data = bytearray(vm_load.pattern(1000))
    del data[500]
    (out / "debugcon.bin").write_bytes(bytes(data))
    numbers = glibc_sequence(vm_load.SEED, 4)
    serial = "".join(f"IOCTL P0 {i} {v}\n" for i, v in enumerate(numbers[:3]))
    res = RunResult(ok=True, guest_rc=0, failed=None, reason="", serial=serial, elapsed=1.0,
                    out=out, serial_log=out / "s", capture=out / "debugcon.bin",
                    server_log=out / "l", server_stderr=out / "e", qemu_log=out / "q",
                    txlog=out / "t")
    r = vm_load.check(res, 1000, 1, 4, 0)
    assert r.bytes_lost == 500 and r.numbers_lost == 1 and not r.ok, r


@pytest.mark.parametrize("victim", list(vm_faults.VICTIMS))
def test_a_random_time_kill_ends_the_run_named_and_clean(tmp_path: Path, victim: str) -> None:
    from qbridge import image

    busy = image.build_initramfs(vm_faults.BUSY_SCRIPT, tmp_path / "busy.cpio")
    at = random.Random(victim).uniform(0.0, vm_faults.VICTIMS[victim][3])
    trial = vm_faults.kill_trial(victim, at, busy, tmp_path / "run")
    assert trial.ok, f"killed at {trial.killed_s} s: {trial.problem}\n{trial.verdict}"
