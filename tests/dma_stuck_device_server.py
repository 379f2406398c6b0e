"""The device server with a DMA engine that hangs: a transfer stays BUSY, writing
nothing and consuming no number, until COMMAND.MASTER is cleared, which ends it with
ERROR (as docs/dma.md says clearing Bus Master does to a running transfer).

Run by the launcher as `python -m tests.dma_stuck_device_server <server args>` (model
backend) to exercise the driver's timeout: it must give up on the transfer after its
bounded wait, stop the engine by clearing Bus Master, warn, and serve the read by MMIO
with glibc's stream unchanged; at remove the engine is idle.
"""

from __future__ import annotations

import sys

from qbridge import server

from models import device
from models.contract.regmap import (
    COMMAND_MASTER,
    DMA_STATUS_BUSY,
    DMA_STATUS_ERROR,
    RNG_REGISTERS,
)

_DMA_STATUS = next(r.offset for r in RNG_REGISTERS if r.name == "DMA_STATUS")
_read = device.Dma.read


def _hanging_transfer(self: device.Dma) -> None:
    self.status = DMA_STATUS_BUSY


def _read_stopping_without_master(self: device.Dma, offset: int) -> int:
    if (offset == _DMA_STATUS and self.status & DMA_STATUS_BUSY
            and not self._config.command & COMMAND_MASTER):
        self.status = DMA_STATUS_ERROR
    return _read(self, offset)


if __name__ == "__main__":
    device.Dma._transfer = _hanging_transfer  # type: ignore[method-assign]
    device.Dma.read = _read_stopping_without_master  # type: ignore[method-assign]
    sys.exit(server.main())
