"""The device server with the RNG as it was before RNG64: CAPS and RNG64 read 0.

Run by the launcher as `python -m tests.rng32_device_server <server args>` (model backend)
to show that the driver stays compatible with a device without CAPS: it must take the
4-byte RNG path for /dev/hwrng, and the bytes must still be glibc's.  The offsets come
from models/contract/regmap.py; on such a device they are unused offsets, which read 0.
"""

from __future__ import annotations

import sys

from qbridge import server

from models import device
from models.contract.regmap import RNG_REGISTERS

_ABSENT = frozenset(dw for reg in RNG_REGISTERS if reg.name in ("CAPS", "RNG64")
                    for dw in reg.dwords)
_read = device.Rng.read


def _read_without_rng64(self: device.Rng, offset: int) -> int:
    return 0 if offset in _ABSENT else _read(self, offset)


if __name__ == "__main__":
    device.Rng.read = _read_without_rng64  # type: ignore[method-assign]
    sys.exit(server.main())
