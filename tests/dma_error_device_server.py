"""The device server with a DMA engine that always fails: every transfer ends at once with
ERROR, writing nothing and consuming no number (as docs/dma.md says a transfer does with
COMMAND.MASTER clear).

Run by the launcher as `python -m tests.dma_error_device_server <server args>` (model
backend) to exercise the driver's fallback: each /dev/hwrng read whose transfer fails is
served by MMIO instead, so the bytes must be glibc's stream in the 24-bit mapping all the
same, and the driver must say so (a rate-limited warning, its dma_errors counter).
"""

from __future__ import annotations

import sys

from qbridge import server

from models import device
from models.contract.regmap import DMA_CTRL_IRQ_EN, DMA_STATUS_ERROR


def _failing_transfer(self: device.Dma) -> None:
    self.status = DMA_STATUS_ERROR
    if self.ctrl & DMA_CTRL_IRQ_EN:
        self._raise()


if __name__ == "__main__":
    device.Dma._transfer = _failing_transfer  # type: ignore[method-assign]
    sys.exit(server.main())
