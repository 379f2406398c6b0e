"""The launcher fails loudly, fast and cleanly when a component fails.

The CLI (`python -m qbridge.launch`) runs as a subprocess so that its children are found
the way an operator would find them: by a /proc scan.  A component is killed while the
guest is using the device; the launcher must exit non-zero within seconds, name the
component, and leave no process behind -- even when the launcher itself is SIGKILLed.
A server that stops answering (SIGSTOP), panics, a missing end marker, a run timeout, a
server or QEMU that cannot start and bad configurations are each reported as such.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qbridge import image
from qbridge.childenv import child_env
from qbridge.launch import Component, LaunchConfig, Timeouts, launch, qemu_command

from bench.robustness.vm_faults import busy_script
from models.contract.layout import REPO

# The guest keeps using the device (an ID register read every 0.1 s) for up to a minute.
_BUSY_SCRIPT = busy_script(60)
# How long the launcher may take to notice a death and stop everything (SIGTERM grace
# included).  It polls every 50 ms; seconds, not the run timeout.
_NOTICE_S = 10.0


def _initrd(tmp: Path, name: str, script: str) -> Path:
    return image.build_initramfs(script, tmp / f"{name}.cpio")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[1], []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _launcher(initrd: Path, out: Path, backend: str, timeout: float = 300,
              transport: str = "proxy") -> subprocess.Popen[str]:
    env = child_env()
    return subprocess.Popen(
        [sys.executable, "-m", "qbridge.launch", "--kernel", str(image.vmlinux()),
         "--initrd", str(initrd), "--out", str(out), "--timeout", str(timeout),
         "--backend", backend, "--sim", "icarus", "--transport", transport],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
    )


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the launcher exited ({proc.returncode}) before {text!r}:\n{out}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{text!r} not in {path} after {timeout} s")


# victim -> (transport, backend, what to kill (command line substring), the component to
# be named).  The RTL server runs its serve loop inside a simulator subprocess (vvp for
# Icarus): that process dying is the device server failing.  Over vfio-user QEMU 11.1 runs
# chrooted ("chroot ROOT qemu-system-x86_64", exec'd: one process).
_VICTIMS = {
    "server": ("proxy", "model", "qbridge.server", Component.SERVER),
    "qemu": ("proxy", "model", "qemu-system", Component.QEMU),
    "rtl-simulator": ("proxy", "rtl", "vvp ", Component.SERVER),
    "vfio-user-server": ("vfio-user", "model", "qbridge.server", Component.SERVER),
    "vfio-user-qemu": ("vfio-user", "model", "qemu-system", Component.QEMU),
    "vfio-user-rtl-simulator": ("vfio-user", "rtl", "vvp ", Component.SERVER),
}


@pytest.mark.parametrize("victim", list(_VICTIMS))
def test_killing_a_component_mid_run_fails_fast_naming_it_and_leaves_no_process(
    tmp_path: Path, victim: str
) -> None:
    transport, backend, pattern, name = _VICTIMS[victim]
    initrd = _initrd(tmp_path, "busy", _BUSY_SCRIPT)
    out = tmp_path / "out"
    proc = _launcher(initrd, out, backend, transport=transport)
    try:
        _wait_for(out / "serial.log", "BUSY 3 ", proc, timeout=240)
        family = _descendants(proc.pid)
        targets = [p for p in family if pattern in _cmdline(p)]
        assert len(targets) == 1, f"expected one {pattern} under the launcher: " \
            f"{ {p: _cmdline(p) for p in family} }"
        killed_at = time.monotonic()
        os.kill(targets[0], signal.SIGKILL)
        try:
            output, _ = proc.communicate(timeout=_NOTICE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launcher still runs {_NOTICE_S} s after the {victim} was killed")
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode != 0, f"the launcher exited 0 after the {victim} died:\n{output}"
    assert f"FAIL ({name}:" in output, f"the failure does not name the {name}:\n{output}"
    left = {p: _cmdline(p) for p in family if _alive(p)}
    assert not left, f"processes left behind after the {victim} died: {left}"
    assert took < _NOTICE_S, f"took {took:.1f} s to notice"
    for artifact in ("serial.log", "server.log", "txlog.txt", "debugcon.bin"):
        assert (out / artifact).is_file(), f"{artifact} was not kept in {out}"


def test_children_die_with_a_sigkilled_launcher(tmp_path: Path) -> None:
    # SIGKILL leaves the launcher no chance to clean up: the children's parent-death
    # signal must end them.
    out = tmp_path / "out"
    proc = _launcher(_initrd(tmp_path, "busy", _BUSY_SCRIPT), out, "model")
    try:
        _wait_for(out / "serial.log", "BUSY 3 ", proc, timeout=120)
        family = _descendants(proc.pid)
        assert len(family) >= 2, f"expected the server and QEMU under the launcher: {family}"
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + _NOTICE_S
        while any(_alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    left = {p: _cmdline(p) for p in family if _alive(p)}
    for pid in left:  # do not leave them running even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived the SIGKILLed launcher: {left}"


def test_a_server_that_stops_answering_is_named_at_the_run_timeout(tmp_path: Path) -> None:
    # SIGSTOP: alive but silent, as a hung simulator.  QEMU's vCPU then waits forever for
    # the reply (no timeout in x-pci-proxy-dev): only the run timeout can end it.
    timeout = 25.0
    out = tmp_path / "out"
    proc = _launcher(_initrd(tmp_path, "busy", _BUSY_SCRIPT), out, "model", timeout)
    try:
        _wait_for(out / "serial.log", "BUSY 3 ", proc, timeout=timeout)
        family = _descendants(proc.pid)
        server = next(p for p in family if "qbridge.server" in _cmdline(p))
        os.kill(server, signal.SIGSTOP)
        output, _ = proc.communicate(timeout=timeout + _NOTICE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode != 0, f"the launcher exited 0 with a stopped server:\n{output}"
    assert f"FAIL ({Component.SERVER}: stopped" in output and "run timeout" in output, output
    left = {p: _cmdline(p) for p in family if _alive(p)}
    assert not left, f"processes left behind (a stopped server must be killed too): {left}"


def test_guest_kernel_panic_is_reported_as_a_panic(tmp_path: Path) -> None:
    initrd = _initrd(tmp_path, "panic", "echo c > /proc/sysrq-trigger\nsleep 30\n")
    res = launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path / "out",
                              timeouts=Timeouts(run=120.0)))
    assert not res.ok and res.failed is Component.GUEST, f"{res.failed}: {res.reason}"
    assert "kernel panic" in res.reason and "sysrq" in res.reason, res.reason


def test_qemu_exit_without_end_marker_fails(tmp_path: Path) -> None:
    # The script powers off itself: QEMU exits 0 but /init never printed COSIM-END.
    initrd = _initrd(tmp_path, "poweroff", "poweroff -f\nsleep 30\n")
    res = launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path / "out",
                              timeouts=Timeouts(run=120.0)))
    assert not res.ok and res.failed is Component.QEMU, f"{res.failed}: {res.reason}"
    assert "end marker" in res.reason, res.reason


def test_run_timeout_stops_everything_and_says_so(tmp_path: Path) -> None:
    initrd = _initrd(tmp_path, "hang", "echo hanging\nsleep 600\n")
    t0 = time.monotonic()
    res = launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path / "out",
                              timeouts=Timeouts(run=15.0)))
    took = time.monotonic() - t0
    assert not res.ok and "run timeout" in res.reason, f"{res.failed}: {res.reason}"
    assert res.failed is Component.GUEST, f"a hung guest was blamed on {res.failed}"
    assert took < 15.0 + _NOTICE_S, f"the 15 s timeout took {took:.1f} s"
    assert res.qemu_rc is not None and res.server_rc is not None, "a child was not reaped"


def test_server_that_cannot_start_is_named_without_booting(tmp_path: Path) -> None:
    initrd = _initrd(tmp_path, "none", "true\n")
    res = launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path / "out",
                              server_module="qbridge.no_such_server"))
    assert not res.ok and res.failed is Component.SERVER, f"{res.failed}: {res.reason}"
    assert "before it was ready" in res.reason and "No module named" in res.reason, res.reason
    assert res.serial == "", "QEMU was started although the server never became ready"


def test_bad_configuration_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    kernel = image.vmlinux()
    initrd = _initrd(tmp_path, "none", "true\n")
    cases = [
        ({"backend": "fpga"}, ValueError, "Backend must be 'model' or 'rtl'"),
        ({"sim": "questa"}, ValueError, "Simulator must be 'icarus' or 'verilator'"),
        ({"accel": "hvf"}, ValueError, "Accelerator must be 'tcg' or 'kvm'"),
        ({"pin": 4096}, ValueError, "CPU 4096 is not available"),
        ({"kernel": tmp_path / "nope"}, FileNotFoundError, "The kernel"),
        ({"initrd": tmp_path / "nope"}, FileNotFoundError, "The initrd"),
    ]
    for change, error, message in cases:
        args = {"kernel": kernel, "initrd": initrd, "out": tmp_path / "out", **change}
        with pytest.raises(error, match=message):
            LaunchConfig(**args)  # type: ignore[arg-type]


def test_qemu_command_uses_only_stock_devices_and_kvm_needs_a_host_cpu(tmp_path: Path) -> None:
    initrd = _initrd(tmp_path, "none", "true\n")
    for accel, cpu in (("tcg", None), ("kvm", "host,-arch-capabilities")):
        cfg = LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path, accel=accel)
        cmd = qemu_command(cfg, 7, tmp_path / "dbg.sock")
        assert cmd[cmd.index("-accel") + 1] == accel, cmd
        assert "x-pci-proxy-dev,id=rng0,fd=7" in cmd, cmd
        assert f"socket,id=dbg,path={tmp_path / 'dbg.sock'}" in cmd, cmd
        assert "isa-debugcon,iobase=0xe9,chardev=dbg" in cmd, cmd
        assert ("-cpu" in cmd) == (cpu is not None) and (
            cpu is None or cmd[cmd.index("-cpu") + 1] == cpu), cmd


def test_a_server_dying_after_ready_is_named_although_qemu_fails_first(tmp_path: Path) -> None:
    # Found by `make robustness`: a simulator killed right after it was ready made QEMU
    # fail to connect its debugcon chardev, and QEMU, the consequence, was blamed.
    initrd = _initrd(tmp_path, "none", "true\n")
    res = launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path / "out",
                              server_module="tests.crashing_server"))
    assert not res.ok and res.failed is Component.SERVER, f"{res.failed}: {res.reason}"
    assert "simulated crash" in res.reason and "then QEMU" in res.reason, res.reason


def test_qemu_that_cannot_start_is_named_with_its_error(tmp_path: Path) -> None:
    initrd = _initrd(tmp_path, "none", "true\n")
    res = launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path / "out",
                              extra_qemu_args=["-device", "no-such-device"]))
    assert not res.ok and res.failed is Component.QEMU, f"{res.failed}: {res.reason}"
    assert "no-such-device" in res.reason, f"QEMU's own error is not in {res.reason!r}"
    assert res.server_rc is not None, "the device server was not stopped"


def test_an_unwritable_output_folder_fails_before_starting_anything(tmp_path: Path) -> None:
    """Regression (issue 6): this was a NotADirectoryError traceback with exit status 1
    from the interpreter, not a launcher failure."""
    initrd = _initrd(tmp_path, "none", "true\n")
    (tmp_path / "file").write_text("")
    res = launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path / "file" / "o"))
    assert not res.ok and res.failed is Component.LAUNCHER, f"{res.failed}: {res.reason}"
    assert "output folder" in res.reason and "Not a directory" in res.reason, res.reason
    assert res.server_rc is None and res.qemu_rc is None, "a child was started"


def test_a_read_only_output_folder_is_named_by_the_cli_without_a_traceback(
        tmp_path: Path) -> None:
    # Root writes anywhere: drop CAP_DAC_OVERRIDE (setpriv's bounding set) so that the
    # folder's 0555 mode applies, as it would to any other user.
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    out.chmod(0o555)
    initrd = _initrd(tmp_path, "none", "true\n")
    env = child_env()
    proc = subprocess.run(
        ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--",
         sys.executable, "-m", "qbridge.launch", "--kernel", str(image.vmlinux()),
         "--initrd", str(initrd), "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"exit status {proc.returncode}:\n{text}"
    assert "FAIL (launcher: the output folder" in text and "Permission denied" in text, text
    assert "Traceback" not in text, text
    assert not list(out.iterdir()), f"files appeared in the read-only folder: {list(out.iterdir())}"


def test_a_missing_qemu_chroot_fails_at_once_naming_qemu_and_the_remedy(tmp_path: Path) -> None:
    initrd = _initrd(tmp_path, "none", "true\n")
    t0 = time.monotonic()
    res = launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path / "out",
                              transport="vfio-user", qemu_root=tmp_path / "no-chroot"))
    assert not res.ok and res.failed is Component.QEMU, f"{res.failed}: {res.reason}"
    assert "make qemu11" in res.reason and str(tmp_path / "no-chroot") in res.reason, res.reason
    assert res.server_rc is None, "a server was started although QEMU cannot run"
    assert time.monotonic() - t0 < 5, "took seconds to notice a missing chroot"


def test_vfio_user_qemu_command_runs_the_chroot_with_shared_memory(tmp_path: Path) -> None:
    initrd = _initrd(tmp_path, "none", "true\n")
    root = tmp_path / "root"
    cfg = LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path,
                       transport="vfio-user", qemu_root=root)
    cmd = qemu_command(cfg, "/tmp/run/device.sock", "/tmp/run/dbg.sock", "/tmp/run/k",
                       "/tmp/run/i")
    assert cmd[:3] == ["chroot", str(root), "qemu-system-x86_64"], cmd
    assert cmd[cmd.index("-kernel") + 1] == "/tmp/run/k", cmd
    device = json.loads(cmd[cmd.index("-device") + 1])
    assert device == {"driver": "vfio-user-pci", "id": "rng0",
                      "socket": {"type": "unix", "path": "/tmp/run/device.sock"}}, device
    assert f"memory-backend-memfd,id=ram,size={cfg.memory},share=on" in cmd, cmd
    assert "memory-backend=ram" in cmd and not any("x-pci-proxy-dev" in a for a in cmd), cmd
