"""Who can reach the device server: the launcher's sockets exist only as a socketpair (the
model backend's proxy) or in a private 0700 run folder (debugcon, the RTL backend's
proxy), so another user cannot connect; children are started from argument lists, never
through a shell, so paths with spaces and shell syntax are taken literally."""

from __future__ import annotations

import ast
import errno
import os
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest
from qbridge import image
from qbridge.launch import Component, LaunchConfig, RunResult, _Run, launch

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534  # Debian's nobody / nogroup


def _connect_as_nobody(path: Path) -> int:
    """Connect to the Unix socket `path` from a forked child running as nobody; the errno
    of the failure, or 0 when the connection succeeded."""
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, try, report through the exit status
        code = 99
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                code = 0
            except OSError as exc:
                code = exc.errno or 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _result(out: Path) -> RunResult:
    return RunResult(
        ok=False, guest_rc=None, failed=None, reason="", serial="", elapsed=0.0, out=out,
        serial_log=out / "serial.log", capture=out / "debugcon.bin",
        server_log=out / "server.log", server_stderr=out / "server.stderr",
        qemu_log=out / "qemu.log", txlog=out / "txlog.txt",
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_another_user_cannot_connect_to_the_launchers_server_sockets(tmp_path: Path) -> None:
    initrd = image.build_initramfs("true\n", tmp_path / "none.cpio")
    cfg = LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path / "out")
    (tmp_path / "out").mkdir()
    run = _Run(cfg, _result(tmp_path / "out"), time.monotonic())
    try:
        proxy = run.start_server()  # the real server process, as the launcher starts it
        mode = stat.S_IMODE(run.rundir.stat().st_mode)
        sockets = [p for p in run.rundir.iterdir() if stat.S_ISSOCK(p.stat().st_mode)]
        refused = {p.name: _connect_as_nobody(p) for p in sockets}
        # Root (the launcher's user) can: the sockets are live, the refusal is about the user.
        own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        own.connect(str(run.rundir / "debugcon.sock"))
        own.close()
        proxy_kind = proxy.getsockname()  # a socketpair end has no name
        server_cmd = Path(f"/proc/{run.server.pid}/cmdline").read_bytes().split(b"\0") \
            if run.server else []
    finally:
        run.close()
    assert mode == 0o700, f"the run folder {run.rundir} has mode {mode:o}, not 700"
    assert [p.name for p in sockets] == ["debugcon.sock"], f"sockets: {sockets}"
    assert all(code == errno.EACCES for code in refused.values()), \
        f"nobody's connect results (errno, 0 = connected): {refused}"
    assert proxy_kind in ("", b""), f"the model proxy is a named socket: {proxy_kind!r}"
    assert b"--transport-fd" in server_cmd and b"--transport-listen" not in server_cmd, server_cmd


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_the_nobody_probe_can_connect_where_permissions_allow() -> None:
    """Teeth for the test above: the same probe connects to an open socket (in a folder
    of /tmp that others may search; pytest's tmp_path is private)."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="cosim-open-") as name:
        folder = Path(name)
        folder.chmod(0o755)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(folder / "s.sock"))
            listener.listen(1)
            (folder / "s.sock").chmod(0o777)
            code = _connect_as_nobody(folder / "s.sock")
        finally:
            listener.close()
    assert code == 0, f"nobody could not connect to a 0777 socket (errno {code})"


def test_launcher_starts_children_without_a_shell() -> None:
    tree = ast.parse((REPO / "qemu-bridge/qbridge/launch.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    shell = [ast.unparse(c) for c in calls
             if any(k.arg == "shell" for k in c.keywords)
             or ast.unparse(c.func) in ("os.system", "os.popen", "subprocess.getoutput",
                                        "subprocess.getstatusoutput")]
    assert not shell, f"shell invocations in qbridge.launch: {shell}"


def test_paths_with_spaces_and_shell_syntax_are_passed_literally(tmp_path: Path) -> None:
    weird = tmp_path / "out dir; touch PWNED $(touch PWNED2) `id` 'q\""
    initrd = image.build_initramfs("true\n", tmp_path / "i $(x).cpio")
    res = launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=weird,
                              extra_qemu_args=["-device", "no-such-device"]))
    assert not res.ok and res.failed is Component.QEMU, f"{res.failed}: {res.reason}"
    assert "no-such-device" in res.reason, res.reason
    assert (weird / "debugcon.bin").is_file() and (weird / "server.log").is_file(), \
        f"the server did not write into {weird!s}: {sorted(os.listdir(weird))}"
    pwned = [p for p in (tmp_path, REPO, Path.cwd()) for n in ("PWNED", "PWNED2")
             if (p / n).exists()]
    assert not pwned, f"a shell interpreted a path: {pwned}"
