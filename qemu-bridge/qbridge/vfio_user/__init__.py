"""The vfio-user transport: QEMU's `vfio-user-pci` device served by our device core.

- `qbridge.vfio_user.protocol`: the wire format (constants, structs, receiving one whole
  message with its fds, replies, server-to-client DMA messages).
- `qbridge.vfio_user.transport`: `VfioUserTransport`, the server side of one connection.

Ref: QEMU docs/interop/vfio-user.rst; decisions: docs/bridge-protocol.md, "vfio-user".
"""

from qbridge.vfio_user.protocol import DmaError, ProtocolError
from qbridge.vfio_user.transport import VfioUserTransport

__all__ = ["DmaError", "ProtocolError", "VfioUserTransport"]
