"""Two RNG devices in one guest: linux-driver/my_rng.c registers both, each under its own names.

qbridge.launch attaches one device server, so this test starts two model servers itself
(`python -m qbridge.server --backend model`, one socketpair each; the first also serves
isa-debugcon) and one QEMU: `qemu_command()`'s command line plus a second
`x-pci-proxy-dev`.  In the guest, my_rng must create /dev/my_rng_driver (the tutorial's
name, for the first device) and /dev/my_rng_driver1, and register two hw_random sources,
my_rng and my_rng1.  The reference program then runs on each node, and /dev/hwrng is read
from each source right after its node's run (glibc through ctypes is the oracle); each
server's transaction log shows that the two nodes drive two different devices.

Every wait has a timeout, every process started here is stopped at the end, and a broken
boot fails every test (never skips).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from qbridge import image
from qbridge.launch import END_MARKER, LaunchConfig, qemu_command
from qbridge.signoff import pack24

REPO = Path(__file__).resolve().parents[1]
SERVER_READY_S = 60.0
RUN_S = 240.0  # QEMU start -> QEMU exit (the guest powers off after the script)
STOP_S = 30.0  # QEMU exit -> server exit
HWRNG_BYTES = 64
HWRNG_SOURCES = ("my_rng", "my_rng1")
SEED_OFFSET = 0x4  # cosim_regs.h
BAR0_MASK = 0xFFF  # BAR0 is 4 KiB (models/regmap.py): offset = address & mask

ROUND_LINE = re.compile(r"^NODE(\d) Round (\d) number (\d): (\d+)$", re.MULTILINE)
# host time, simulation time, guest step, then the transaction (docs/transactions.md)
TX_LINE = re.compile(r"^\S+ \S+ \S+ MEM_WRITE .*?addr=(0x[0-9a-f]+).*?data=(0x[0-9a-f]+)")


def _hwrng_read(name: str) -> str:
    return (f"dd if=/dev/hwrng of=/tmp/hwrng bs={HWRNG_BYTES} count=1 2>/dev/null\n"
            f'echo "HWRNG {name} $(od -An -tx1 -v /tmp/hwrng | tr -d \' \\n\')"')


def _script() -> str:
    hwrng = "/sys/class/misc/hw_random"
    # Each device is seeded by rng_ref on its node right before /dev/hwrng reads it, so
    # both reads give the numbers after glibc srand(0)'s first five.  A read of the wrong
    # device would give others: the first device is past those when the second is read,
    # and the second is unseeded until its own rng_ref.  Selecting my_rng1 reads a few
    # numbers from it (the core's add_early_randomness()); the seed after it resets that.
    # rng_ref opens /dev/my_rng_driver by name: for the second node, that name points to
    # /dev/my_rng_driver1 for the time of the run.
    return f"""\
insmod {image.guest_module("my_rng")} || exit 10
echo "PROBED $(dmesg | grep -c 'RNG interface version')"
for n in /dev/my_rng_driver /dev/my_rng_driver1; do echo "NODE $(ls -l $n)"; done
echo "HWRNG-AVAILABLE $(cat {hwrng}/rng_available)"
echo "HWRNG-CURRENT $(cat {hwrng}/rng_current)"
rng_ref | sed 's/^/NODE0 /'
{_hwrng_read("my_rng")}
echo my_rng1 > {hwrng}/rng_current || exit 13
mv /dev/my_rng_driver /dev/my_rng_driver0 || exit 11
ln -s /dev/my_rng_driver1 /dev/my_rng_driver || exit 11
rng_ref | sed 's/^/NODE1 /'
rm /dev/my_rng_driver && mv /dev/my_rng_driver0 /dev/my_rng_driver || exit 12
{_hwrng_read("my_rng1")}
rmmod my_rng || exit 14
test -e /dev/my_rng_driver && exit 15
test -e /dev/my_rng_driver1 && exit 16
dmesg | grep -i -E 'my_rng|hwrng'
exit 0
"""


@dataclass
class TwoDeviceRun:
    serial: str
    guest_rc: int | None
    qemu_rc: int | None
    server_rcs: list[int | None]
    txlogs: list[Path]
    problems: list[str]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "qemu-bridge")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _tail(path: Path, n: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after a few seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            _stop(proc)


def _start_server(n: int, out: Path, debugcon: Path | None,
                  procs: list[subprocess.Popen[bytes]]) -> tuple[socket.socket, Path]:
    """Start model server `n` on a socketpair; QEMU's end and the server's ready file."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ready = out / f"server{n}.ready"
    cmd = [sys.executable, "-m", "qbridge.server", "--backend", "model",
           "--transport-fd", str(theirs.fileno()),
           "--capture", str(out / f"debugcon{n}.bin"), "--txlog", str(out / f"txlog{n}.txt"),
           "--log", str(out / f"server{n}.log"), "--ready-file", str(ready)]
    if debugcon is not None:
        cmd += ["--debugcon-listen", str(debugcon)]
    with open(out / f"server{n}.stderr", "wb") as err:
        procs.append(subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), env=_env(), cwd=REPO,
                                      stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                      start_new_session=True))
    # Only the server holds its end: when QEMU exits, the server sees the close.
    theirs.close()
    return ours, ready


def _wait_ready(ready: Path, proc: subprocess.Popen[bytes], stderr: Path) -> None:
    deadline = time.monotonic() + SERVER_READY_S
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"device server exited {proc.returncode} before it was "
                                 f"ready:\n{_tail(stderr)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"device server not ready after {SERVER_READY_S:.0f} s:\n"
                                 f"{_tail(stderr)}")
        time.sleep(0.05)


def _boot_two_devices(out: Path) -> TwoDeviceRun:
    initrd = image.build_initramfs(_script(), out / "two-devices.cpio")
    cfg = LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=out, backend="model")
    debugcon = out / "debugcon.sock"
    problems: list[str] = []
    with _processes() as procs:
        ends, readies = [], []
        for n in range(2):
            end, ready = _start_server(n, out, debugcon if n == 0 else None, procs)
            ends.append(end)
            readies.append(ready)
        for n, (ready, proc) in enumerate(zip(readies, procs, strict=True)):
            _wait_ready(ready, proc, out / f"server{n}.stderr")

        cmd = qemu_command(cfg, ends[0].fileno(), debugcon)
        cmd += ["-device", f"x-pci-proxy-dev,id=rng1,fd={ends[1].fileno()}"]
        serial_log = out / "serial.log"
        with open(serial_log, "wb") as serial, open(out / "qemu.log", "wb") as qlog:
            qemu = subprocess.Popen(cmd, pass_fds=[e.fileno() for e in ends],
                                    stdin=subprocess.DEVNULL, stdout=serial, stderr=qlog,
                                    start_new_session=True)
        procs.insert(0, qemu)  # stopped first, so the servers see the close
        for end in ends:
            end.close()  # QEMU holds the only copies now

        # A dead server leaves QEMU running with all-ones reads: watch both, bounded.
        deadline = time.monotonic() + RUN_S
        while qemu.poll() is None:
            dead = [n for n, p in enumerate(procs[1:]) if p.poll() is not None]
            if dead:
                problems.append(f"device server {dead[0]} exited "
                                f"{procs[1 + dead[0]].returncode} while QEMU ran")
                break
            if time.monotonic() > deadline:
                problems.append(f"QEMU still running after {RUN_S:.0f} s")
                break
            time.sleep(0.1)
        _stop(qemu)
        server_rcs: list[int | None] = []
        for proc in procs[1:]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_S)
            server_rcs.append(proc.poll())

    serial = serial_log.read_text(errors="replace").replace("\r", "")
    ends_seen = END_MARKER.findall(serial)
    return TwoDeviceRun(serial=serial, guest_rc=int(ends_seen[-1]) if ends_seen else None,
                        qemu_rc=qemu.returncode, server_rcs=server_rcs,
                        txlogs=[out / f"txlog{n}.txt" for n in range(2)], problems=problems)


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> TwoDeviceRun:
    return _boot_two_devices(tmp_path_factory.mktemp("two-devices"))


def _clean(run: TwoDeviceRun) -> TwoDeviceRun:
    tail = "\n".join(run.serial.splitlines()[-40:])
    assert not run.problems, f"{'; '.join(run.problems)}; serial log tail:\n{tail}"
    assert "Kernel panic" not in run.serial, f"kernel panic:\n{tail}"
    assert run.guest_rc is not None, f"no {END_MARKER.pattern} line from the guest:\n{tail}"
    assert run.server_rcs == [0, 0], f"device servers exited {run.server_rcs}"
    return run


def _tagged(serial: str, tag: str) -> list[str]:
    return re.findall(rf"^{tag} (.*?)\s*$", serial, re.MULTILINE)


def _seeds(txlog: Path) -> list[int]:
    """The SEED values written to one device's BAR0, in order."""
    seeds = []
    for line in txlog.read_text().splitlines():
        m = TX_LINE.match(line)
        if m is not None and int(m.group(1), 16) & BAR0_MASK == SEED_OFFSET:
            seeds.append(int(m.group(2), 16))
    return seeds


def test_both_devices_probe_and_get_their_own_nodes(boot: TwoDeviceRun) -> None:
    serial = _clean(boot).serial
    assert _tagged(serial, "PROBED") == ["2"], f"my_rng did not probe two devices:\n{serial}"
    nodes = _tagged(serial, "NODE")
    for name in ("/dev/my_rng_driver", "/dev/my_rng_driver1"):
        listing = [n for n in nodes if n.endswith(" " + name)]
        assert listing, f"{name} missing; node listings: {nodes}\n{serial}"
        assert listing[0].startswith("crw-------"), f"{name} is {listing[0]}"
    assert "cannot register" not in serial, f"a registration failed:\n{serial}"


def test_two_hwrng_sources_are_available(boot: TwoDeviceRun) -> None:
    serial = _clean(boot).serial
    available = _tagged(serial, "HWRNG-AVAILABLE")
    assert available, f"no rng_available line:\n{serial}"
    sources = available[0].split()
    assert [s for s in sources if s.startswith("my_rng")] == list(HWRNG_SOURCES), (
        f"rng_available is {sources}, want both of {HWRNG_SOURCES}")
    # Equal quality: the first source registered stays the current one.
    assert _tagged(serial, "HWRNG-CURRENT") == ["my_rng"], "my_rng is not the current source"


def test_each_node_serves_the_tutorial_abi_on_its_own_device(
        boot: TwoDeviceRun, glibc: Callable[[int, int], list[int]]) -> None:
    run = _clean(boot)
    want = glibc(0, 5)
    for node in "01":
        rounds: dict[int, list[int]] = {}
        for m in ROUND_LINE.finditer(run.serial):
            if m.group(1) == node:
                rounds.setdefault(int(m.group(2)), []).append(int(m.group(4)))
        assert rounds == {0: want, 1: want}, (
            f"rng_ref on node {node} printed {rounds}, glibc srand(0) gives {want}")
    # rng_ref seeds twice: each device got exactly its own program's two SEED writes.
    seeds = [_seeds(t) for t in run.txlogs]
    assert seeds == [[0, 0], [0, 0]], (
        f"SEED writes per device {seeds}: the two nodes do not drive two devices")


def test_each_hwrng_source_reads_its_own_device(
        boot: TwoDeviceRun, glibc: Callable[[int, int], list[int]]) -> None:
    serial = _clean(boot).serial
    # 24 bits per number (docs/hwrng.md)
    want = pack24(glibc(0, 5 + HWRNG_BYTES // 3 + 1)[5:])[:HWRNG_BYTES]
    for name in HWRNG_SOURCES:
        lines = _tagged(serial, f"HWRNG {name}")
        assert lines, f"no /dev/hwrng read from {name}:\n{serial}"
        got = bytes.fromhex(lines[0])
        assert got == want, (
            f"/dev/hwrng from {name} gave {got.hex()}; its device, just seeded with 0 by "
            f"rng_ref, gives {want.hex()}: the source read another device, or something else "
            "read this one")


def test_guest_script_completes_and_removes_both_nodes(boot: TwoDeviceRun) -> None:
    assert _clean(boot).guest_rc == 0, f"guest script exited {boot.guest_rc}"
