"""Device DMA and interrupts through the bridge, model backend, both transports.

The device core serves the golden model behind a fake QEMU; guest RAM is a memfd handed
over as QEMU does (x-pci-proxy-dev: SYNC_SYSMEM; vfio-user: DMA_MAP), the interrupt
eventfds as QEMU arms them (vfio-user SET_IRQS).  What the device writes is checked
against glibc itself (models.glibc_oracle), byte by byte in the memfd; a transfer outside
guest RAM must end with ERROR, a logged refusal, RAM untouched and the server serving on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from qbridge.core import DeviceCore
from qbridge.proxy.transport import ProxyTransport
from qbridge.vfio_user import protocol as p
from qbridge.vfio_user.transport import VfioUserTransport

from bench.fake_qemu import FakeQemu
from models.contract.regmap import (
    COMMAND_INTX_DISABLE,
    COMMAND_MASTER,
    COMMAND_MEMORY,
    DMA_CTRL_IRQ_EN,
    DMA_CTRL_START,
    DMA_STATUS_DONE,
    DMA_STATUS_ERROR,
    INT_STATUS_DMA,
    MSI_CAP,
    MSI_CONTROL_ENABLE,
    RNG_ID_VALUE,
    RNG_REGISTERS,
)
from models.device import Device
from models.glibc_oracle import glibc_sequence
from tests.vfio_user_fake_client import DMA_MAP, SET_IRQS, Client

REG = {r.name: r.offset for r in RNG_REGISTERS}
RAM_GPA = 0x10_0000  # where the memfd sits in the guest's physical address space
RAM_SIZE = 0x4_0000
MSI_ADDR, MSI_DATA = 0xFEE0_0000, 0x4021


def expected_bytes(seed: int, length: int) -> bytes:
    """`length` bytes of the stream after srand(seed): one little-endian DW per number."""
    numbers = glibc_sequence(seed, -(-length // 4))
    return b"".join(n.to_bytes(4, "little") for n in numbers)[:length]


@contextmanager
def serving(transport_cls: type) -> Iterator[tuple[socket.socket, DeviceCore]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    core = DeviceCore(Device(), transport_cls(b), idle_poll=0.05)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(core.serve())
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield a, core
    finally:
        a.close()
        thread.join(10)
        b.close()
    assert not thread.is_alive(), "serve() still running after the client closed"
    assert not errors, f"serve() raised {errors!r}"


@pytest.fixture
def ram() -> Iterator[int]:
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, RAM_SIZE)
    os.pwrite(fd, b"\xa5" * RAM_SIZE, 0)
    yield fd
    os.close(fd)


# --- x-pci-proxy-dev ---------------------------------------------------------------------


def proxy_transfer(q: FakeQemu, addr: int, length: int, ctrl: int = 0) -> int:
    base = FakeQemu.BAR0
    q.bar_write(base + REG["DMA_ADDR"], addr & 0xFFFF_FFFF)
    q.bar_write(base + REG["DMA_ADDR"] + 4, addr >> 32)
    q.bar_write(base + REG["DMA_LEN"], length)
    q.bar_write(base + REG["DMA_CTRL"], ctrl | DMA_CTRL_START)
    return q.bar_read(base + REG["DMA_STATUS"])


def proxy_up(sock: socket.socket, ram: int) -> FakeQemu:
    q = FakeQemu(sock)
    q.cfg_write(0x10, FakeQemu.BAR0)
    q.cfg_write(0x04, COMMAND_MEMORY | COMMAND_MASTER, 2)
    # RAM in two regions of one file, as QEMU splits it around the PCI hole.
    q.sync_sysmem([(RAM_GPA, RAM_SIZE // 2, 0),
                   (RAM_GPA + RAM_SIZE // 2, RAM_SIZE // 2, RAM_SIZE // 2)], [ram, ram])
    q.bar_write(FakeQemu.BAR0 + REG["SEED"], 7)
    return q


def test_proxy_dma_lands_in_guest_ram_across_regions_and_pages(ram: int) -> None:
    addr, length = RAM_GPA + RAM_SIZE // 2 - 0x1002 + 2, 0x2003  # crosses regions and pages
    with serving(ProxyTransport) as (sock, core):
        q = proxy_up(sock, ram)
        status = proxy_transfer(q, addr, length)
        got = os.pread(ram, length + 8, addr - RAM_GPA - 4)
        counts = core.guest.counts
    assert status == DMA_STATUS_DONE, f"DMA_STATUS {status:#x}"
    assert got[4:-4] == expected_bytes(7, length), "guest RAM differs from glibc's stream"
    assert got[:4] == b"\xa5" * 4 and got[-4:] == b"\xa5" * 4, "written outside the buffer"
    assert counts.refused == 0 and counts.writes == -(-length // 4), counts


def test_proxy_interrupt_is_reported_undeliverable_once(ram: int, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="cosim.bridge.proxy")
    with serving(ProxyTransport) as (sock, core):
        q = proxy_up(sock, ram)
        for _ in range(3):
            assert proxy_transfer(q, RAM_GPA, 64, DMA_CTRL_IRQ_EN) == DMA_STATUS_DONE
            assert q.bar_read(FakeQemu.BAR0 + REG["INT_STATUS"]) == INT_STATUS_DMA
            q.bar_write(FakeQemu.BAR0 + REG["INT_STATUS"], INT_STATUS_DMA)  # W1C
        counts = core.guest.counts
    said = [r for r in caplog.records if "KVM's irqfd" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert counts.intx == 3 and counts.undelivered == 3, counts


def test_proxy_dma_outside_guest_ram_is_refused_and_serving_goes_on(ram: int,
                                                                    caplog) -> None:
    caplog.set_level(logging.ERROR, logger="cosim.bridge.dma")
    with serving(ProxyTransport) as (sock, core):
        q = proxy_up(sock, ram)
        status = proxy_transfer(q, RAM_GPA + RAM_SIZE - 8, 64)  # runs off the end of RAM
        after = q.bar_read(FakeQemu.BAR0 + REG["ID"])
        counts = core.guest.counts
    assert status == DMA_STATUS_ERROR, f"DMA_STATUS {status:#x}"
    assert after == RNG_ID_VALUE, "the server no longer answers properly"
    assert os.pread(ram, 8, RAM_SIZE - 8) == expected_bytes(7, 8), "the part inside RAM"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "refused" in errors[0].getMessage(), errors
    assert counts.refused >= 1, counts


# --- vfio-user ---------------------------------------------------------------------------

CONFIG, BAR0 = p.PCI_CONFIG_REGION_INDEX, p.PCI_BAR0_REGION_INDEX
TRIGGER_EVENTFD = p.IRQ_SET_DATA_EVENTFD | p.IRQ_SET_ACTION_TRIGGER
UNMASK = p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_UNMASK


def eventfd_count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def vfio_up(sock: socket.socket, ram: int) -> Client:
    c = Client(sock, timeout=10.0)
    c.version()
    assert not c.request(DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, RAM_GPA, RAM_SIZE),
                         fds=[ram]).error
    c.write(CONFIG, 0x10, 0xFEBF_1000, 4)
    c.write(CONFIG, 0x04, COMMAND_MEMORY | COMMAND_MASTER, 2)
    c.write(BAR0, REG["SEED"], 3, 4)
    return c


def arm(c: Client, index: int) -> int:
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    reply = c.request(SET_IRQS, struct.pack("<IIIII", 20, TRIGGER_EVENTFD, index, 0, 1),
                      fds=[fd])
    assert reply is not None and not reply.error, reply
    return fd


def vfio_transfer(c: Client, addr: int, length: int, ctrl: int) -> int:
    c.write(BAR0, REG["DMA_ADDR"], addr, 8)
    c.write(BAR0, REG["DMA_LEN"], length, 4)
    c.write(BAR0, REG["DMA_CTRL"], ctrl | DMA_CTRL_START, 4, posted=True)
    return c.read_int(BAR0, REG["DMA_STATUS"], 4)


def test_vfio_user_dma_and_one_msi_per_transfer(ram: int) -> None:
    with serving(VfioUserTransport) as (sock, core):
        c = vfio_up(sock, ram)
        c.write(CONFIG, MSI_CAP + 4, MSI_ADDR, 4)
        c.write(CONFIG, MSI_CAP + 12, MSI_DATA, 2)
        c.write(CONFIG, MSI_CAP + 2, MSI_CONTROL_ENABLE >> 16, 2)
        msi = arm(c, p.PCI_MSI_IRQ_INDEX)
        try:
            fired = []
            for i in range(3):
                status = vfio_transfer(c, RAM_GPA + 0x1000 * i, 0x1000, DMA_CTRL_IRQ_EN)
                assert status == DMA_STATUS_DONE, f"transfer {i}: DMA_STATUS {status:#x}"
                fired.append(eventfd_count(msi))
                c.write(BAR0, REG["INT_STATUS"], INT_STATUS_DMA, 4)
        finally:
            os.close(msi)
        counts = core.guest.counts
    assert fired == [1, 1, 1], f"MSI eventfd counts per transfer: {fired}"
    assert os.pread(ram, 0x3000, 0x0) == expected_bytes(3, 0x3000)
    assert counts.msi == 3 and counts.undelivered == 0, counts
    assert len(core.guest.irq_latencies) == 3, "an interrupt's latency was not measured"


def test_vfio_user_intx_follows_the_level_and_interrupt_disable(ram: int) -> None:
    with serving(VfioUserTransport) as (sock, core):
        c = vfio_up(sock, ram)
        intx = arm(c, p.PCI_INTX_IRQ_INDEX)
        try:
            assert vfio_transfer(c, RAM_GPA, 64, DMA_CTRL_IRQ_EN) == DMA_STATUS_DONE
            first = eventfd_count(intx)
            c.write(BAR0, REG["INT_STATUS"], INT_STATUS_DMA, 4)  # the handler: level drops
            c.request(SET_IRQS, struct.pack("<IIIII", 20, UNMASK, p.PCI_INTX_IRQ_INDEX, 0, 1))
            after_eoi = eventfd_count(intx)  # nothing pending: no interrupt at the unmask
            assert vfio_transfer(c, RAM_GPA, 64, DMA_CTRL_IRQ_EN) == DMA_STATUS_DONE
            second = eventfd_count(intx)
            c.write(BAR0, REG["INT_STATUS"], INT_STATUS_DMA, 4)
            c.request(SET_IRQS, struct.pack("<IIIII", 20, UNMASK, p.PCI_INTX_IRQ_INDEX, 0, 1))
            c.write(CONFIG, 0x04, COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE, 2)
            assert vfio_transfer(c, RAM_GPA, 64, DMA_CTRL_IRQ_EN) == DMA_STATUS_DONE
            disabled = eventfd_count(intx)
        finally:
            os.close(intx)
        counts = core.guest.counts
    assert (first, after_eoi, second, disabled) == (1, 0, 1, 0), \
        f"INTx eventfd: first {first}, at unmask {after_eoi}, second {second}, " \
        f"with Interrupt Disable {disabled}"
    assert counts.intx == 2, counts


# --- the RTL behind the bridge, lock-step ------------------------------------------------


@pytest.mark.parametrize(("sim", "txlog"), [("icarus", True), ("verilator", True),
                                            ("verilator", False)],
                         ids=["icarus", "verilator", "verilator-no-txlog"])
def test_rtl_dma_through_the_bridge_equals_glibc(tmp_path, ram: int, sim: str,
                                                 txlog: bool) -> None:
    """The server with the RTL backend: a transfer across two SYNC_SYSMEM regions and
    several pages lands byte-exact in guest RAM before the START write's reply (the
    lock-step host clocks the device while it works), its INTx is reported undeliverable
    under x-pci-proxy-dev, and a transfer running off the end of RAM ends with ERROR, one
    logged refusal, the server serving on.  Without a txlog, Verilator's fast path hands
    a page's writes to guest RAM as one block (and a block that runs off RAM DW by DW)."""
    from test_bridge_rtl import RtlServer

    addr, length = RAM_GPA + RAM_SIZE // 2 - 0x1000 + 4, 0x2003
    srv = RtlServer(tmp_path, sim, txlog=txlog)
    try:
        q = proxy_up(srv.proxy, ram)
        status = proxy_transfer(q, addr, length, DMA_CTRL_IRQ_EN)
        got = os.pread(ram, length + 8, addr - RAM_GPA - 4)
        pending = q.bar_read(FakeQemu.BAR0 + REG["INT_STATUS"])
        q.bar_write(FakeQemu.BAR0 + REG["INT_STATUS"], INT_STATUS_DMA)
        again = proxy_transfer(q, RAM_GPA, 64)  # the next numbers, its first DW included
        second = os.pread(ram, 64, 0)
        outside = proxy_transfer(q, RAM_GPA + RAM_SIZE - 8, 64)
        ident = q.bar_read(FakeQemu.BAR0 + REG["ID"])
        rc, err = srv.finish()
    finally:
        srv.kill()
    assert rc == 0, f"{sim}: server exited {rc}: {err}"
    assert status == DMA_STATUS_DONE, f"{sim}: DMA_STATUS {status:#x}"
    assert got[4:-4] == expected_bytes(7, length), f"{sim}: guest RAM differs from glibc"
    assert got[:4] == b"\xa5" * 4 and got[-4:] == b"\xa5" * 4, f"{sim}: written outside"
    assert pending == INT_STATUS_DMA, f"{sim}: INT_STATUS {pending:#x}"
    after = expected_bytes(7, -(-length // 4) * 4 + 64)[-64:]
    assert again == DMA_STATUS_DONE and second == after, f"{sim}: the second transfer"
    assert outside == DMA_STATUS_ERROR and ident == RNG_ID_VALUE, (outside, ident)
    log_text = (tmp_path / "server.log").read_text()
    assert log_text.count(" ERROR ") == 1 and "device write refused" in log_text, \
        f"{sim}: expected one logged refusal:\n{log_text[-2000:]}"
    assert "KVM's irqfd" in log_text, f"{sim}: the undeliverable INTx was not reported"
    if not txlog:
        return
    writes = []  # a DW's line `addr=A`, or a block's `addr=A..L dws=N` (docs/transactions.md)
    for line in (tmp_path / "txlog").read_text().splitlines():
        if " DEV MEM_WRITE " in line:
            first, _, last = line.split(" addr=")[1].split()[0].partition("..")
            writes += range(int(first, 16), int(last or first, 16) + 1, 4)
    buffer = range(addr, addr + length)
    assert [a for a in writes if a in buffer] == list(range(addr, addr + length, 4)), \
        f"{sim}: the txlog's DEV writes are not the buffer's DWs in order"
