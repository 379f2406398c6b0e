"""Progress lines for long steps, so a slow step is never mistaken for a hang.

A step prints what it is doing and where its full output goes, a heartbeat while it runs
when nobody watches a terminal (CI logs, pipes), and how long it took:

    setup: installing Python packages ... (log: .venv/pip.log)
    ... still setup: installing Python packages, 20 s
    setup: installing Python packages: done in 42 s

or, on failure, `...: failed after 3 s, see <log>` followed by the log's last lines, so a CI
transcript shows the cause without the log file.  Every line goes to stderr: stdout stays
the program's own output.  The word ERROR never appears here; a failing command's log tail
may contain it, which is the point.

It is stdlib only and on the ground floor, so every floor can use it, and it runs as a
script under the system python3 before the virtual environment exists (the Makefile's
apt and pip steps):

    python3 models/contract/progress.py --what "setup: ..." --log F -- cmd args
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

__all__ = ["HEARTBEAT_S", "TAIL_LINES", "Step", "main", "run", "step", "tail"]

HEARTBEAT_S = 10.0  # between heartbeat lines: often enough to show life, rare enough to read
TAIL_LINES = 30  # of a failed step's log: enough for a compiler's or pip's last error


class Step:
    """A running step: `note()` prints a line under it (e.g. one per finished test case)."""

    def __init__(self, what: str, stream: TextIO) -> None:
        self.what = what
        self.stream = stream
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def note(self, line: str) -> None:
        self._print(f"  {line}")

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60)} s"


def tail(log: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` lines of `log` (none if it does not exist)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


@contextmanager
def step(what: str, log: Path | str | None = None, *, interval: float = HEARTBEAT_S,
         heartbeat: bool | None = None, stream: TextIO | None = None,
         tail_lines: int = TAIL_LINES) -> Iterator[Step]:
    """Announce `what`, beat every `interval` seconds while the body runs (by default only
    when `stream` is not a terminal), then print its duration; an exception out of the body
    prints the failure line and `log`'s tail, then propagates."""
    out = stream if stream is not None else sys.stderr
    if heartbeat is None:
        heartbeat = not (hasattr(out, "isatty") and out.isatty())
    logpath = Path(log) if log is not None else None
    s = Step(what, out)
    s._print(f"{what} ..." + (f" (log: {logpath})" if logpath else ""))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            s._print(f"... still {what}, {_seconds(s.elapsed())}")

    beater = threading.Thread(target=beat, name="progress-heartbeat", daemon=True)
    if heartbeat:
        beater.start()
    try:
        yield s
    except BaseException:
        stop.set()
        if beater.is_alive():
            beater.join(timeout=interval + 1)
        where = f", see {logpath}" if logpath else ""
        s._print(f"{what}: failed after {_seconds(s.elapsed())}{where}")
        if logpath:
            lines = tail(logpath, tail_lines)
            if lines:
                s._print(f"--- last {len(lines)} lines of {logpath} ---")
                for line in lines:
                    s._print(line)
                s._print(f"--- end of {logpath} ---")
        raise
    stop.set()
    if beater.is_alive():
        beater.join(timeout=interval + 1)
    s._print(f"{what}: done in {_seconds(s.elapsed())}")


class StepFailed(Exception):
    """A command run under `run` exited non-zero (its status in `returncode`)."""

    def __init__(self, returncode: int) -> None:
        super().__init__(f"exit status {returncode}")
        self.returncode = returncode


def run(cmd: Sequence[str], what: str, log: Path | str, *, interval: float = HEARTBEAT_S,
        heartbeat: bool | None = None, stream: TextIO | None = None,
        timeout: float | None = None) -> int:
    """Run `cmd` as a step, its stdout and stderr to `log` (appended, so a retry keeps the
    first attempt's output); return its exit status (124 on `timeout`, 127 when it cannot
    start, like the shell)."""
    logpath = Path(log)
    logpath.parent.mkdir(parents=True, exist_ok=True)
    try:
        with step(what, logpath, interval=interval, heartbeat=heartbeat, stream=stream):
            with logpath.open("ab") as f:
                f.write(f"$ {' '.join(cmd)}\n".encode())
                f.flush()
                try:
                    rc = subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, timeout=timeout).returncode
                except subprocess.TimeoutExpired:
                    f.write(f"progress: timed out after {timeout} s\n".encode())
                    rc = 124
                except OSError as e:
                    f.write(f"progress: cannot run {cmd[0]}: {e}\n".encode())
                    rc = 127
            if rc != 0:
                raise StepFailed(rc)
    except StepFailed as e:
        return e.returncode
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="progress.py", description="Run a command as a long step: its output to a log, "
        "progress lines on stderr, its exit status returned.")
    p.add_argument("--what", required=True, help="what the step does, e.g. 'setup: pip'")
    p.add_argument("--log", required=True, type=Path, help="file for the command's output")
    p.add_argument("--interval", type=float, default=HEARTBEAT_S,
                   help="seconds between heartbeat lines")
    p.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command and its arguments")
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("no command given (after --)")
    return run(cmd, a.what, a.log, interval=a.interval, timeout=a.timeout)


if __name__ == "__main__":
    sys.exit(main())
