"""Experiment: the device server's floor -- BAR reads answered at once, no device behind.

The model server (`qbridge.server`), except that every BAR read gets a constant reply
straight from the receive loop (no Host, model or txlog); config space and everything
else are served as usual, so the guest enumerates the function and maps BAR0.  Timing
`mmio_bench` against it splits a guest read into "QEMU's x-pci-proxy-dev round trip plus
the minimal Python loop" and "our per-access work" (bench/README.md, first target).
The RNG numbers are wrong on purpose: never a sign-off backend.

    LaunchConfig(..., backend="model", server_module="bench.floor_server")
    python -m qbridge.launch ... --server-module bench.floor_server
"""

from __future__ import annotations

import sys

from qbridge import server
from qbridge.proxy_protocol import Cmd, Message, send_reply

_FLOOR_VALUE = 0x1234_5678
_dispatch = server.DeviceServer._dispatch


async def _floor_dispatch(self: server.DeviceServer, msg: Message) -> None:
    if msg.cmd is Cmd.BAR_READ:
        send_reply(self.proxy, _FLOOR_VALUE, self.message_timeout)
        return
    await _dispatch(self, msg)


if __name__ == "__main__":
    server.DeviceServer._dispatch = _floor_dispatch  # type: ignore[method-assign]
    sys.exit(server.main())
