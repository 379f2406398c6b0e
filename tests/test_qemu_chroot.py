"""The QEMU 11.1 userland (qbridge.qemu_chroot): the host mirror is read from apt's own
sources, every kind of broken userland is named and rebuilt, concurrent set-ups build
once, and the real one under build/ (made by `make test`'s set-up) runs the pinned QEMU
with the vfio-user client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from qbridge import qemu_chroot as qc
from qbridge.childenv import child_env

from models.contract.layout import REPO, qemu_chroot_dir

FAKE_QEMU = b"#!/bin/sh\necho fake qemu\n" + b"\0" * 100


# -- the host's mirror ----------------------------------------------------------------------

def _etc(tmp_path: Path, files: dict[str, str]) -> Path:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


def test_mirror_from_deb822_sources_skips_security_and_disabled(tmp_path: Path) -> None:
    etc = _etc(tmp_path, {"sources.list.d/debian.sources": """\
Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://off.example/debian
Suites: bookworm
Enabled: no

Types: deb-src deb
# a comment
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
"""})
    assert qc.host_mirror(etc) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources_with_options(tmp_path: Path) -> None:
    etc = _etc(tmp_path, {"sources.list": """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main
deb [arch=amd64 signed-by=/k.gpg] http://line.example/debian bookworm main
"""})
    assert qc.host_mirror(etc) == "http://line.example/debian"


def test_mirror_falls_back_to_debian_when_the_host_names_none(tmp_path: Path) -> None:
    assert qc.host_mirror(_etc(tmp_path, {})) == qc.FALLBACK_MIRROR


# -- what problem() sees --------------------------------------------------------------------

def _fake_build(root: Path, mirror: str = "m", logfile: Path | None = None) -> None:
    (root / "usr/bin").mkdir(parents=True)
    binary = root / qc.QEMU_BINARY
    binary.write_bytes(FAKE_QEMU)
    binary.chmod(0o755)


def _fake_verify(root: Path) -> str:
    if (root / qc.QEMU_BINARY).read_bytes() != FAKE_QEMU:
        raise qc.ChrootError("fake QEMU does not run")
    return "QEMU emulator version fake"


def _built(tmp_path: Path) -> Path:
    root = tmp_path / "qemu-11"
    assert qc.ensure(root, "m", _fake_build, _fake_verify) == "QEMU emulator version fake"
    assert qc.problem(root) is None
    return root


def test_problem_names_each_kind_of_broken_userland(tmp_path: Path) -> None:
    root = tmp_path / "qemu-11"
    assert qc.problem(root) == "not built"
    _fake_build(root)
    assert "half-built" in str(qc.problem(root))

    stamp = root / qc.STAMP
    stamp.write_text("{not json")
    assert "unreadable" in str(qc.problem(root))
    good = {"package": qc.QEMU_PACKAGE, "version": qc.QEMU_VERSION, "suite": qc.SUITE,
            "binary_size": len(FAKE_QEMU)}
    stamp.write_text(json.dumps({**good, "version": "1:10.0.2"}))
    assert qc.problem(root) == (f"built with version '1:10.0.2', the project pins "
                                f"{qc.QEMU_VERSION!r}")
    stamp.write_text(json.dumps(good))
    assert qc.problem(root) is None
    (root / qc.QEMU_BINARY).write_bytes(FAKE_QEMU[:-10])
    assert "bytes" in str(qc.problem(root))
    (root / qc.QEMU_BINARY).chmod(0o644)
    (root / qc.QEMU_BINARY).write_bytes(FAKE_QEMU)
    assert qc.problem(root) == f"{qc.QEMU_BINARY} is not executable"
    (root / qc.QEMU_BINARY).unlink()
    assert qc.problem(root) == f"{qc.QEMU_BINARY} is missing"


# -- ensure(): build, keep, rebuild ---------------------------------------------------------

class _Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, root: Path, mirror: str, logfile: Path) -> None:
        self.calls += 1
        time.sleep(0.2)  # long enough for a concurrent ensure() to meet the lock
        _fake_build(root)


def test_a_ready_userland_is_kept_and_a_corrupted_one_rebuilt(tmp_path: Path) -> None:
    root = _built(tmp_path)
    marker = root / "kept"
    marker.touch()
    builder = _Counting()
    qc.ensure(root, "m", builder, _fake_verify)
    assert builder.calls == 0 and marker.exists()

    # Same size, other bytes: problem() cannot see it, running QEMU does.
    (root / qc.QEMU_BINARY).write_bytes(b"X" * len(FAKE_QEMU))
    qc.ensure(root, "m", builder, _fake_verify)
    assert builder.calls == 1 and not marker.exists() and qc.problem(root) is None

    (root / qc.STAMP).unlink()
    qc.ensure(root, "m", builder, _fake_verify)
    assert builder.calls == 2


def test_a_killed_build_leaves_nothing_behind_and_never_counts_as_built(tmp_path: Path) -> None:
    root = tmp_path / "qemu-11"
    stale = tmp_path / "qemu-11.tmp-99999999"  # a build killed half-way
    (stale / "usr").mkdir(parents=True)

    def failing(tmp: Path, mirror: str, logfile: Path) -> None:
        (tmp / "etc").mkdir(parents=True)
        raise qc.ChrootError("debootstrap failed (exit 1): E: no route; see LOG")

    with pytest.raises(qc.ChrootError, match="no route"):
        qc.ensure(root, "m", failing, _fake_verify)
    assert not root.exists()
    assert not stale.exists()
    assert list(tmp_path.glob("qemu-11.tmp-*")) == []

    def wrong_qemu(tmp: Path, mirror: str, logfile: Path) -> None:
        _fake_build(tmp)
        (tmp / qc.QEMU_BINARY).write_bytes(b"Y")

    with pytest.raises(qc.ChrootError, match="does not run"):
        qc.ensure(root, "m", wrong_qemu, _fake_verify)
    assert not root.exists() and list(tmp_path.glob("qemu-11.tmp-*")) == []


def test_concurrent_setups_build_once(tmp_path: Path) -> None:
    root = tmp_path / "qemu-11"
    builder = _Counting()
    errors: list[BaseException] = []

    def one() -> None:
        try:
            qc.ensure(root, "m", builder, _fake_verify)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and builder.calls == 1 and qc.problem(root) is None


def test_the_cli_checks_and_refuses_bad_arguments(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qbridge.qemu_chroot", *args],
                              capture_output=True, text=True, env=child_env(), cwd=REPO,
                              timeout=60, check=False)

    missing = cli("--check", "--dir", str(tmp_path / "none"))
    assert missing.returncode == 1 and "not built" in missing.stdout
    a_file = tmp_path / "file"
    a_file.write_text("")
    bad = cli("--dir", str(a_file))
    assert bad.returncode == 2 and "is not a folder" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert cli("--frobnicate").returncode == 2


# -- the real one ---------------------------------------------------------------------------

def test_the_project_userland_runs_the_pinned_qemu_with_vfio_user() -> None:
    root = qemu_chroot_dir()
    assert qc.problem(root) is None, f"{root}: {qc.problem(root)} (make qemu11)"
    version = qc.verify(root)
    upstream = qc.QEMU_VERSION.split(":", 1)[1].split("+", 1)[0]
    assert f"version {upstream}" in version and qc.QEMU_VERSION.split(":", 1)[1] in version


def test_removal_unmounts_what_a_killed_debootstrap_left_and_never_deletes_through_it(
        tmp_path: Path) -> None:
    stale = tmp_path / "qemu-11.tmp-1"
    proc = stale / "proc"
    proc.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(proc)], check=True, timeout=30)
    try:
        (proc / "inside").write_text("must not be walked into")
        qc._remove(stale)
        assert not stale.exists()
    finally:
        subprocess.run(["umount", "--lazy", str(proc)], capture_output=True, check=False,
                       timeout=30)
