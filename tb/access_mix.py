"""Random `Host` accesses for RTL-versus-model comparisons, shared by the endpoint cases
(`tb.cases_endpoint`, the testbench's `RtlEndpoint`) and the lock-step path's (`tb.cases_lockstep`).

Every space and size, biased towards the registers that matter: RNG, SEED, ID, CAPS and
both DWs of RNG64 in BAR0 (aligned half of the time, so 8-byte reads take the paths of
whole DWs), the config header (writes only above the BARs: the BARs and COMMAND keep
the device enabled), and the debugcon port with a neighbour and an unclaimed port.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from models.contract.regmap import BAR0_TEST_BASE, COMMAND_IO, COMMAND_MEMORY, DEBUGCON_PORT
from models.contract.transaction import Host, Space

__all__ = ["BAR0", "Access", "apply_both", "enable", "first_difference", "random_access"]

BAR0 = BAR0_TEST_BASE
_BAR0_OFFSETS = (0, 0, 4, 8, 0xC, 0x10, 0x10, 0x14, 0xFF8)
_IO = ((DEBUGCON_PORT, 1), (DEBUGCON_PORT, 1), (0xE8, 2), (0x80, 1))


@dataclass(frozen=True)
class Access:
    space: Space
    addr: int
    size: int
    value: int | None  # None: a read

    def __str__(self) -> str:
        what = "read" if self.value is None else "write"
        return f"{what} {self.space.name} {self.addr:#x}/{self.size}"


async def enable(*hosts: Host) -> None:
    """Program BAR0 and enable memory and I/O decoding, as the guest's PCI core does."""
    for h in hosts:
        await h.cfg_write(0x10, BAR0)
        await h.cfg_write(0x04, COMMAND_MEMORY | COMMAND_IO, 2)


def random_access(rnd: random.Random) -> Access:
    space = rnd.choice((Space.MEM, Space.MEM, Space.CFG, Space.IO))
    size = rnd.choice((1, 2, 4, 8))
    if space is Space.MEM:
        addr = BAR0 + rnd.choice(_BAR0_OFFSETS) + (rnd.randrange(4) if rnd.random() < 0.5 else 0)
    elif space is Space.CFG:
        addr = rnd.randrange(0x40)
        size = min(size, 4)
    else:
        addr, size = rnd.choice(_IO)
    write = rnd.random() < 0.5 and not (space is Space.CFG and addr < 0x14)
    return Access(space, addr, size, rnd.getrandbits(8 * size) if write else None)


async def apply_both(rtl: Host, model: Host, acc: Access) -> str | None:
    """Do `acc` on the RTL's host and then on the model's; for a read whose values differ,
    what differs (writes are compared by their effects: console bytes, later reads)."""
    if acc.value is not None:
        await rtl.write(acc.space, acc.addr, acc.value, acc.size)
        await model.write(acc.space, acc.addr, acc.value, acc.size)
        return None
    got = await rtl.read(acc.space, acc.addr, acc.size)
    want = await model.read(acc.space, acc.addr, acc.size)
    return None if got == want else f"{acc}: RTL {got:#x}, model {want:#x}"


def first_difference(a: bytes | bytearray, b: bytes | bytearray) -> int:
    """Index of the first byte where `a` and `b` differ (the shorter length if one is a
    prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))
