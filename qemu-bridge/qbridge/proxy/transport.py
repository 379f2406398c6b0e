"""QEMU 7.2's x-pci-proxy-dev as a transport of the device core.

Each message of `qbridge.proxy.protocol` becomes core calls: config accesses are
`cfg_read`/`cfg_write`, BAR accesses `read`/`write` at the absolute bus address (the
device decodes it against the BAR0 the guest programmed; `Host` splits 8-byte and
unaligned accesses into DW requests and turns an unsupported request into all-ones),
DEVICE_RESET is `core.reset()`.  SYNC_SYSMEM's guest-RAM table (`qbridge.proxy.sysmem`,
mapped: the device's DMA goes there, `dma_read`/`dma_write`) and SET_IRQFD's eventfds are
kept here, the transport's own state.  The irqfds only work through KVM's irqfd: under TCG
no interrupt of the device can reach the guest, which the log says once (drivers poll).
Protocol and decisions: docs/bridge-protocol.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from models.contract.transaction import Space
from qbridge.core import DeviceCore
from qbridge.proxy.protocol import (
    BarAccess,
    Cmd,
    ConfigAccess,
    Message,
    SyncSysmem,
    SysmemRegion,
    close_fds,
    recv_message,
    send_reply,
)
from qbridge.proxy.sysmem import SysmemTable

__all__ = ["ProxyTransport"]

log = logging.getLogger("cosim.bridge.proxy")

_CMD_NAMES = {cmd: cmd.name for cmd in Cmd}  # `Enum.name` is slow, and this is per message
# Messages whose accesses the transaction log records (server.log does not repeat them).
_ACCESSES = frozenset((Cmd.PCI_CFGREAD, Cmd.PCI_CFGWRITE, Cmd.BAR_READ, Cmd.BAR_WRITE))


class ProxyTransport:
    """One x-pci-proxy-dev connection (`sock`: connected, blocking stream socket)."""

    name = "proxy"  # the launcher's TRANSPORT name; QEMU's device is x-pci-proxy-dev

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # Guest RAM regions of the last SYNC_SYSMEM, as sent and mapped for device DMA.
        self.sysmem: tuple[SysmemRegion, ...] = ()
        self.ram = SysmemTable()
        self._told_no_irq = False
        # SET_IRQFD's (interrupt, resample) eventfds: only usable through KVM's irqfd.
        self.irqfds: tuple[int, ...] = ()
        self._handlers: dict[Cmd, Callable[[DeviceCore, Message], Awaitable[int | None]]] = {
            Cmd.BAR_READ: self._bar_read,
            Cmd.BAR_WRITE: self._bar_write,
            Cmd.PCI_CFGREAD: self._cfg_read,
            Cmd.PCI_CFGWRITE: self._cfg_write,
            Cmd.SYNC_SYSMEM: self._sync_sysmem,
            Cmd.SET_IRQFD: self._set_irqfd,
            Cmd.DEVICE_RESET: self._reset,
        }

    def fileno(self) -> int:
        return self.sock.fileno()

    async def on_readable(self, core: DeviceCore) -> bool:
        msg = recv_message(self.sock, core.message_timeout)
        if msg is None:
            return False
        cmd = msg.cmd
        core.counts[_CMD_NAMES[cmd]] += 1
        reply = await self._handlers[cmd](core, msg)
        if cmd not in _ACCESSES and log.isEnabledFor(logging.DEBUG):
            # Accesses are in the transaction log; a debug record per access cost ~20% of
            # the server's time per guest read (py-spy, bench/README.md).
            log.debug("%s -> %s", msg, "no reply" if reply is None else f"{reply:#x}")
        if msg.wants_reply:
            assert reply is not None, f"no reply computed for {msg}"
            send_reply(self.sock, reply, core.message_timeout)
        return True

    @staticmethod
    async def _bar_read(core: DeviceCore, msg: Message) -> int:
        addr, _, size, memory = msg.payload  # type: ignore[misc]
        return await core.host.read(Space.MEM if memory else Space.IO, addr, size)

    @staticmethod
    async def _bar_write(core: DeviceCore, msg: Message) -> int:
        access: BarAccess = msg.payload  # type: ignore[assignment]
        await core.host.write(Space.MEM if access.memory else Space.IO, access.addr,
                              access.val, access.size)
        return 0

    @staticmethod
    async def _cfg_read(core: DeviceCore, msg: Message) -> int:
        access: ConfigAccess = msg.payload  # type: ignore[assignment]
        return await core.host.cfg_read(access.addr, access.length)

    @staticmethod
    async def _cfg_write(core: DeviceCore, msg: Message) -> int:
        access: ConfigAccess = msg.payload  # type: ignore[assignment]
        await core.host.cfg_write(access.addr, access.val, access.length)
        return 0

    async def _sync_sysmem(self, core: DeviceCore, msg: Message) -> None:
        payload: SyncSysmem = msg.payload  # type: ignore[assignment]
        self.sysmem = payload.regions
        try:
            self.ram.update(payload.regions, msg.fds)
        finally:
            close_fds(msg.fds)  # the mappings stay valid without them
        return None

    async def _set_irqfd(self, core: DeviceCore, msg: Message) -> None:
        close_fds(self.irqfds)
        self.irqfds = msg.fds
        return None

    @staticmethod
    async def _reset(core: DeviceCore, msg: Message) -> int:
        await core.reset()
        return 0

    # --- the device's bus-master side (qbridge.guest_host.GuestBus) ----------------------

    def dma_read(self, addr: int, size: int) -> bytes:
        return self.ram.read(addr, size)

    def dma_write(self, addr: int, data: bytes) -> None:
        self.ram.write(addr, data)

    def deliver_msi(self) -> bool:
        return self._no_interrupt("MSI")

    def deliver_intx(self, asserted: bool) -> bool:
        if not asserted:
            return True
        if self.irqfds:
            # Under KVM this is the interrupt (an irqfd is level-resampled by KVM); under
            # TCG the eventfd only counts up, harmlessly.
            with contextlib.suppress(OSError):
                os.write(self.irqfds[0], (1).to_bytes(8, "little"))
        return self._no_interrupt("INTx")

    def _no_interrupt(self, kind: str) -> bool:
        """x-pci-proxy-dev signals interrupts only through SET_IRQFD's eventfds, which QEMU
        hands to KVM's irqfd; under TCG nobody reads them (docs/bridge-protocol.md), and
        the server cannot tell which accelerator QEMU runs, so it reports no delivery."""
        if not self._told_no_irq:
            self._told_no_irq = True
            log.warning("the device raised %s: x-pci-proxy-dev delivers interrupts only "
                        "through KVM's irqfd, so under TCG the guest sees none, this one or "
                        "any later (said once); drivers must poll", kind)
        return False

    def close(self) -> None:
        close_fds(self.irqfds)
        self.irqfds = ()
        self.ram.close()
