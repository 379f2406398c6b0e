"""Experiment: the device server's floor -- BAR reads answered at once, no device behind.

The model server (`qbridge.server`), except that every BAR read gets a constant reply
(no Host, model or txlog); config space and everything else are served as usual, so the
guest enumerates the function and maps BAR0.  Timing `mmio_bench` against it splits a
guest read into "QEMU's x-pci-proxy-dev round trip plus the minimal Python loop" and
"our per-access work" (bench/README.md, first target).
The RNG numbers are wrong on purpose: never a sign-off backend.

    LaunchConfig(..., backend="model", server_module="bench.floor_server")
    python -m qbridge.launch ... --server-module bench.floor_server
"""

from __future__ import annotations

import sys

from qbridge import server
from qbridge.core import DeviceCore
from qbridge.proxy.protocol import Message
from qbridge.proxy.transport import ProxyTransport

_FLOOR_VALUE = 0x1234_5678


async def _floor_bar_read(core: DeviceCore, msg: Message) -> int:
    return _FLOOR_VALUE


if __name__ == "__main__":
    ProxyTransport._bar_read = staticmethod(_floor_bar_read)  # type: ignore[method-assign]
    sys.exit(server.main())
