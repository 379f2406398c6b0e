"""The device server against the real thing: Debian's stock QEMU 7.2, no guest kernel.

QEMU realizes x-pci-proxy-dev (identity reads, BAR sizing), resets the machine, sends
SET_IRQFD and, with memfd-backed guest RAM, SYNC_SYSMEM with real fds; its SeaBIOS then
enumerates PCI and programs BAR0.  SeaBIOS writes its debug log to port 0x402, so we put
isa-debugcon there: its bytes must flow through the server into the console capture.
This proves the wire format and message sequence against QEMU itself in a few seconds,
independent of the guest image.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from qbridge.core import DeviceCore
from qbridge.proxy.transport import ProxyTransport

from models.contract.regmap import BAR0_SIZE
from models.device import Device

QEMU = "qemu-system-x86_64"
FIRMWARE_TIMEOUT_S = 60.0


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def test_stock_qemu_realizes_resets_and_firmware_enumerates_through_the_server(
        tmp_path: Path) -> None:
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} not installed (make apt installs qemu-system-x86)")
    baseline = open_fds()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    dbg_path = tmp_path / "dbg.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(dbg_path))
    listener.listen(1)
    listener.setblocking(False)
    console = bytearray()
    device = Device(console_sink=console.extend)
    server = DeviceCore(device, ProxyTransport(ours), listener, idle_poll=0.05)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    stderr = open(tmp_path / "qemu.stderr", "wb")  # noqa: SIM115 (closed after the fork)
    qemu = subprocess.Popen(
        [QEMU, "-accel", "tcg", "-m", "128M", "-nographic", "-nodefaults",
         "-monitor", "none", "-serial", "none",
         "-object", "memory-backend-memfd,id=mem,size=128M,share=on",
         "-machine", "memory-backend=mem",
         "-device", f"x-pci-proxy-dev,id=rng0,fd={theirs.fileno()}",
         "-chardev", f"socket,id=dbg,path={dbg_path}",
         "-device", "isa-debugcon,iobase=0x402,chardev=dbg"],
        pass_fds=(theirs.fileno(),), stdout=subprocess.DEVNULL, stderr=stderr,
        start_new_session=True)
    stderr.close()
    theirs.close()
    try:
        deadline = time.monotonic() + FIRMWARE_TIMEOUT_S
        # SeaBIOS has enumerated us once BAR0 is programmed and memory decoding enabled.
        while not (device.config.bar0 and device.config.command & 0x2):
            assert qemu.poll() is None, f"QEMU exited {qemu.returncode}: " \
                f"{(tmp_path / 'qemu.stderr').read_text()!r}"
            assert thread.is_alive(), f"server stopped: {errors}"
            assert time.monotonic() < deadline, \
                f"firmware did not program BAR0 within {FIRMWARE_TIMEOUT_S} s: {server.counts}"
            time.sleep(0.05)
        bar0 = device.config.bar0
        time.sleep(0.5)  # let the firmware's log reach the console
    finally:
        qemu.terminate()
        try:
            qemu.wait(20)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.wait()
        thread.join(20)
        listener.close()
        ours.close()
    assert not thread.is_alive(), "serve() did not end when QEMU exited"
    assert errors == [], f"serve() failed against real QEMU: {errors}"
    counts = server.counts
    assert counts["PCI_CFGREAD"] >= 4 + 2 * 7, f"realize reads missing: {counts}"
    assert counts["DEVICE_RESET"] >= 1 and counts["SET_IRQFD"] == 1, f"{counts}"
    assert counts["SYNC_SYSMEM"] >= 1 and server.transport.sysmem, f"no guest RAM map: {counts}"
    ram = max(server.transport.sysmem, key=lambda r: r.size)
    assert ram.size >= 64 << 20, f"largest RAM region {ram}, expected most of 128 MiB"
    assert bar0 % BAR0_SIZE == 0 and bar0 >= 0x80000000, f"BAR0 programmed at {bar0:#x}"
    assert b"SeaBIOS" in console, f"firmware log not captured: {bytes(console[:200])!r}"
    leaked = open_fds() - baseline
    assert not leaked, f"fds left open: {sorted(leaked)} (SYNC_SYSMEM/SET_IRQFD fds leaked)"
