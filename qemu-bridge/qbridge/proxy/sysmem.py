"""Guest RAM as x-pci-proxy-dev's SYNC_SYSMEM messages describe it, mapped for device DMA.

hw/remote/proxy-memory-listener.c sends the whole table of RAM sections that are backed by
a file (one fd per section: `gpa`, `size`, `offset` in the file) on every change of the
guest's memory map; the remote process mmaps them (hw/remote/memory.c).  QEMU passes real
fds only when guest RAM is a shared memory backend (`-object memory-backend-memfd,...,
share=on`, which the launcher sets); with plain RAM the fds are -1 and nothing is mapped.
A region that cannot be mapped is logged (server.log, not stderr: QEMU sends the table a
hundred times) and left out; a device access there is refused, and that is the error the
run reports.

Every message brings new fds for the same few files: a file already mapped (same device
and inode) is kept, so a boot's hundred-odd messages cost a `fstat` each, not a remap.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

from qbridge.guest_host import GuestMemoryError
from qbridge.proxy.protocol import SysmemRegion

__all__ = ["SysmemTable"]

log = logging.getLogger("cosim.bridge.proxy")


@dataclass(frozen=True)
class _Window:
    gpa: int
    size: int
    view: memoryview  # the region's bytes, starting at `gpa`

    @property
    def end(self) -> int:
        return self.gpa + self.size


class SysmemTable:
    """The mapped guest-RAM regions of the last SYNC_SYSMEM."""

    def __init__(self) -> None:
        self._files: dict[tuple[int, int], mmap.mmap] = {}  # (st_dev, st_ino) -> mapping
        self._windows: list[_Window] = []

    @property
    def regions(self) -> list[tuple[int, int]]:
        """(gpa, size) of every mapped region."""
        return [(w.gpa, w.size) for w in self._windows]

    def update(self, regions: Sequence[SysmemRegion], fds: Sequence[int]) -> None:
        """Replace the table with `regions` (one fd each, as the message brought them);
        the fds are not closed here (the caller owns them)."""
        self._release_windows()
        files: dict[tuple[int, int], mmap.mmap] = {}
        for region, fd in zip(regions, fds, strict=True):
            if not region.size:
                continue
            try:
                st = os.fstat(fd)
            except OSError as exc:
                log.info("SYNC_SYSMEM region %#x+%#x: fd unusable (%s): no DMA there",
                            region.gpa, region.size, exc)
                continue
            key = (st.st_dev, st.st_ino)
            mapping = files.get(key) or self._files.pop(key, None)
            if mapping is None:
                if region.offset + region.size > st.st_size:
                    log.info("SYNC_SYSMEM region %#x+%#x at offset %#x beyond its file's "
                                "%#x bytes: not mapped", region.gpa, region.size,
                                region.offset, st.st_size)
                    continue
                try:
                    mapping = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED,
                                        mmap.PROT_READ | mmap.PROT_WRITE)
                except (OSError, ValueError) as exc:
                    log.info("SYNC_SYSMEM region %#x+%#x: cannot map its file (%s): "
                                "no DMA there", region.gpa, region.size, exc)
                    continue
            files[key] = mapping
            if region.offset + region.size > len(mapping):
                log.info("SYNC_SYSMEM region %#x+%#x beyond its mapped file: skipped",
                            region.gpa, region.size)
                continue
            view = memoryview(mapping)[region.offset:region.offset + region.size]
            self._windows.append(_Window(region.gpa, region.size, view))
        for mapping in self._files.values():  # files no region uses any more
            mapping.close()
        self._files = files
        self._windows.sort(key=lambda w: w.gpa)

    def _window(self, addr: int, size: int) -> tuple[_Window, int]:
        for w in self._windows:
            if w.gpa <= addr and addr + size <= w.end:
                return w, addr - w.gpa
        known = ", ".join(f"{g:#x}+{s:#x}" for g, s in self.regions) or "none"
        raise GuestMemoryError(f"{addr:#x}+{size}: not inside guest RAM (SYNC_SYSMEM "
                               f"regions: {known})")

    def read(self, addr: int, size: int) -> bytes:
        w, off = self._window(addr, size)
        return bytes(w.view[off:off + size])

    def write(self, addr: int, data: bytes) -> None:
        w, off = self._window(addr, len(data))
        w.view[off:off + len(data)] = data

    def _release_windows(self) -> None:
        for w in self._windows:
            w.view.release()
        self._windows = []

    def close(self) -> None:
        self._release_windows()
        for mapping in self._files.values():
            mapping.close()
        self._files = {}
