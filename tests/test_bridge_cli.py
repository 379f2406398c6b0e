"""`python -m qbridge.server` end to end as the launcher runs it: a subprocess with an
inherited socketpair end (or a listening socket), debugcon socket, capture, txlog, ready
file, exit status."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qbridge.childenv import child_env

from bench.fake_qemu import CFGREAD, FakeQemu, config_payload
from models.contract.layout import REPO as ROOT

ENV = child_env()


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"server exited {proc.returncode} before {path.name}: " \
                                    f"{proc.communicate()[1]!r}"
        assert time.monotonic() < deadline, f"{path.name} not written within {timeout} s"
        time.sleep(0.02)


def start(tmp_path: Path, *extra: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qbridge.server", "--backend", "model",
           "--debugcon-listen", str(tmp_path / "dbg.sock"), "--capture", str(tmp_path / "cap"),
           "--txlog", str(tmp_path / "txlog"), "--log", str(tmp_path / "server.log"),
           "--ready-file", str(tmp_path / "ready"), *extra]
    return subprocess.Popen(cmd, pass_fds=pass_fds, env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def drive(qemu: FakeQemu, tmp_path: Path, glibc) -> None:
    """A short VM's worth of traffic: realize, enumeration, seed, reads, debugcon."""
    dbg = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dbg.connect(str(tmp_path / "dbg.sock"))
    qemu.reset()
    seen = qemu.realize()
    assert (seen["vendor"], seen["device"]) == (0x1234, 0xCAFE), f"identity {seen}"
    qemu.enable()
    qemu.bar_write(FakeQemu.BAR0 + 4, 0)
    got = [qemu.bar_read(FakeQemu.BAR0) for _ in range(5)]
    assert got == glibc(0, 5), f"numbers {got}, glibc srand(0) gives {glibc(0, 5)}"
    for byte in b"hello from Linux\n":
        dbg.send(bytes([byte]))
    dbg.close()


def test_cli_model_backend_with_transport_fd_serves_and_exits_0(tmp_path: Path, glibc) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = start(tmp_path, "--transport-fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),))
    theirs.close()
    try:
        wait_for(tmp_path / "ready", proc)
        drive(FakeQemu(ours), tmp_path, glibc)
        ours.close()  # QEMU exits
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"server exited {proc.returncode}: {err}"
    assert (tmp_path / "cap").read_bytes() == b"hello from Linux\n", "capture differs"
    txlog = (tmp_path / "txlog").read_text().splitlines()
    assert any("MEM_READ" in line and "SC" in line for line in txlog), "no RNG read in txlog"
    assert any(line.endswith(" RESET") for line in txlog), "DEVICE_RESET not in txlog"
    assert "QEMU closed the proxy connection" in (tmp_path / "server.log").read_text()


def test_cli_transport_listen_accepts_one_connection(tmp_path: Path, glibc) -> None:
    sock_path = tmp_path / "proxy.sock"
    proc = start(tmp_path, "--transport-listen", str(sock_path))
    try:
        wait_for(tmp_path / "ready", proc)
        assert sock_path.exists() and (tmp_path / "dbg.sock").exists(), \
            "ready file written before the sockets exist"
        ours = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.connect(str(sock_path))
        drive(FakeQemu(ours), tmp_path, glibc)
        ours.close()
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"server exited {proc.returncode}: {err}"
    assert (tmp_path / "cap").read_bytes() == b"hello from Linux\n", "capture differs"


def test_cli_protocol_error_exits_nonzero_with_one_line_error(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = start(tmp_path, "--transport-fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),))
    theirs.close()
    try:
        wait_for(tmp_path / "ready", proc)
        FakeQemu(ours).send(CFGREAD, config_payload(0, 0, 5))
        _, err = proc.communicate(timeout=20)
    finally:
        ours.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, f"exit status {proc.returncode} after a protocol error"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "protocol error" in lines[0] and "length 5" in lines[0], \
        f"stderr is not one clear line: {err!r}"


def test_cli_accept_timeout_exits_nonzero(tmp_path: Path) -> None:
    proc = start(tmp_path, "--transport-listen", str(tmp_path / "proxy.sock"),
                 "--accept-timeout", "0.5")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1, f"exit status {proc.returncode} when nobody connects"
    assert "nobody connected" in err, f"unclear error: {err!r}"


@pytest.mark.parametrize("args, message", [
    (["--backend", "rtl", "--transport-fd", "3", "--capture", "x"], "use --transport-listen"),
    (["--backend", "model", "--capture", "x"], "--transport-fd"),
    (["--backend", "model", "--transport-fd", "99", "--capture", "CAP"], "not a usable socket"),
])
def test_cli_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    args = [str(tmp_path / "cap") if a == "CAP" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "qbridge.server", *args], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0, f"accepted {args}"
    assert message in proc.stderr, f"stderr {proc.stderr!r} does not mention {message!r}"


def test_cli_vfio_user_transport_serves_the_model(tmp_path: Path, glibc) -> None:
    """--transport vfio-user: QEMU is the client and connects to --transport-listen."""
    from vfio_user_fake_client import DEVICE_RESET, Client

    sock_path = tmp_path / "vfio-user.sock"
    proc = start(tmp_path, "--transport", "vfio-user", "--transport-listen", str(sock_path))
    try:
        wait_for(tmp_path / "ready", proc)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(sock_path))
        client = Client(conn, timeout=10.0)
        client.version()
        bar0, config = 0, 7  # vfio-pci region indexes (linux/vfio.h)
        assert client.read_int(config, 0, 4) == 0xCAFE_1234, "identity over region 7"
        client.request(DEVICE_RESET)
        client.write(config, 0x10, 0xFEBF_1000, 4)
        client.write(config, 0x04, 0x0002, 2)  # COMMAND.MEM
        client.write(bar0, 4, 0, 4, posted=True)  # SEED 0, posted as QEMU posts BAR writes
        got = [client.read_int(bar0, 0, 4) for _ in range(5)]
        assert got == glibc(0, 5), f"numbers {got}, glibc srand(0) gives {glibc(0, 5)}"
        dbg = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dbg.connect(str(tmp_path / "dbg.sock"))
        dbg.sendall(b"hello from Linux\n")
        dbg.close()
        conn.close()  # QEMU exits
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"server exited {proc.returncode}: {err}"
    assert (tmp_path / "cap").read_bytes() == b"hello from Linux\n", "capture differs"
    assert "client closed the vfio-user connection" in (tmp_path / "server.log").read_text()


def test_cli_debugcon_burst_is_in_the_capture_file_at_the_next_reply(tmp_path: Path) -> None:
    # The capture is buffered and written through once per debugcon batch (and transport
    # message): by the reply to an access sent after a 64 KiB burst, the file holds it all.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = start(tmp_path, "--transport-fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),))
    theirs.close()
    text = bytes((i * 13) & 0xFF for i in range(64 * 1024 + 5))
    try:
        wait_for(tmp_path / "ready", proc)
        qemu = FakeQemu(ours)
        dbg = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dbg.connect(str(tmp_path / "dbg.sock"))
        dbg.sendall(text)
        qemu.cfg_read(0, 2)
        at_reply = (tmp_path / "cap").read_bytes()
        dbg.close()
        ours.close()
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"server exited {proc.returncode}: {err}"
    assert at_reply == text, f"capture held {len(at_reply)} of {len(text)} bytes at the reply"
    assert (tmp_path / "cap").read_bytes() == text, "capture differs at the end"
    assert "ERROR" not in (tmp_path / "server.log").read_text(), "ERROR logged on a good run"
