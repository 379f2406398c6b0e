"""models.contract.progress: the lines a long step prints, and its exit status."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from models.contract import progress
from models.contract.layout import REPO

SCRIPT = REPO / "models" / "contract" / "progress.py"


class _Watched(io.StringIO):
    """A non-terminal stream that signals when a heartbeat line arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.beat = threading.Event()

    def write(self, s: str) -> int:
        if "still" in s:
            self.beat.set()
        return super().write(s)


def test_step_beats_while_running_then_says_done(tmp_path: Path) -> None:
    out = _Watched()
    with progress.step("building the thing", tmp_path / "b.log", interval=0.01, stream=out):
        assert out.beat.wait(timeout=30), "no heartbeat while the step ran"
    lines = out.getvalue().splitlines()
    assert lines[0] == f"building the thing ... (log: {tmp_path / 'b.log'})"
    assert any(line.startswith("... still building the thing, ") for line in lines)
    assert lines[-1].startswith("building the thing: done in ")
    assert "ERROR" not in out.getvalue()


def test_step_on_a_terminal_does_not_beat_by_default() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with progress.step("quiet", interval=0.001, stream=out) as s:
        s.note("one case passed")
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["quiet ...", "  one case passed"]
    assert len(lines) == 3 and lines[2].startswith("quiet: done in ")
    assert "still" not in out.getvalue()


def test_step_failure_names_the_log_and_shows_its_tail(tmp_path: Path) -> None:
    log = tmp_path / "f.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "the real cause\n")
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        with progress.step("compiling", log, stream=out, heartbeat=False, tail_lines=5):
            raise RuntimeError("boom")
    text = out.getvalue()
    assert "compiling: failed after " in text and f"see {log}" in text
    assert "the real cause" in text and "line 95" not in text and "line 96" in text


def _script(tmp_path: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    # The system python3's view: run as a file, not as a module of the package.
    return subprocess.run([sys.executable, str(SCRIPT), "--what", "setup: fake",
                           "--log", str(tmp_path / "s.log"), "--interval", "0.01", "--", *cmd],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_script_success_logs_output_and_prints_done(tmp_path: Path) -> None:
    r = _script(tmp_path, "sh", "-c", "echo to-the-log; echo err-to-the-log >&2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "setup: fake: done in " in r.stderr and "ERROR" not in r.stderr
    assert "to-the-log" not in r.stderr
    log = (tmp_path / "s.log").read_text()
    assert "to-the-log" in log and "err-to-the-log" in log


def test_script_failure_propagates_status_and_tail(tmp_path: Path) -> None:
    r = _script(tmp_path, "sh", "-c", "echo why-it-broke; exit 3")
    assert r.returncode == 3
    assert "setup: fake: failed after " in r.stderr
    assert f"see {tmp_path / 's.log'}" in r.stderr
    assert "why-it-broke" in r.stderr


def test_script_missing_command_is_127(tmp_path: Path) -> None:
    r = _script(tmp_path, "no-such-command-here")
    assert r.returncode == 127
    assert "cannot run no-such-command-here" in r.stderr
