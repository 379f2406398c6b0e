"""Random `Host` accesses for RTL-versus-model comparisons, shared by the endpoint cases
(`tb.cases_endpoint`, the testbench's `RtlEndpoint`) and the lock-step path's (`tb.cases_lockstep`).

Every space and size, biased towards the registers that matter: RNG, SEED, ID, CAPS and
both DWs of RNG64 in BAR0 (aligned half of the time, so 8-byte reads take the paths of
whole DWs), the config header (writes only above the BARs: the BARs and COMMAND keep
the device enabled), and the debugcon port with a neighbour and an unclaimed port.

Checks fail at the first difference, naming the access, what the model expected and
what the RTL returned: `accesses_match_model` raises `AccessMismatch` at the first read
that differs, `ConsoleCheck` raises `ConsoleMismatch` at the first console byte that
differs (or is extra, or, where the path guarantees the byte is out already, missing).
Collecting differences and failing at the end let a wrong byte go unnoticed until a
later comparison or a timeout.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from models.contract.regmap import BAR0_TEST_BASE, COMMAND_IO, COMMAND_MEMORY, DEBUGCON_PORT
from models.contract.transaction import Host, Space

__all__ = [
    "BAR0",
    "Access",
    "AccessMismatch",
    "ConsoleCheck",
    "ConsoleMismatch",
    "accesses_match_model",
    "apply_both",
    "enable",
    "random_access",
]

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


class AccessMismatch(AssertionError):
    """A read returned something else on the RTL than on the model."""


class ConsoleMismatch(AssertionError):
    """The RTL's console stream differs from the model's."""


class ConsoleCheck:
    """The RTL's console bytes against the model's, failing at the first difference.

    `rtl_sink` is the RTL endpoint's console sink, `model_sink` the model's.  Byte k is
    compared as soon as both sides have it, whichever comes second: on `RtlEndpoint` the
    RTL's byte may reach its sink before the model has run the I/O write (the FIFO offers
    it two cycles after the acknowledge, the completion may be back-pressured longer).
    `current` names the access being applied; each model byte remembers it, so a
    message says which write a byte came from.
    """

    def __init__(self) -> None:
        self.rtl = bytearray()
        self.model = bytearray()
        self.current = "before any access"
        self._sources: list[str] = []
        self._checked = 0

    def rtl_sink(self, data: bytes) -> None:
        self.rtl.extend(data)
        self._compare()

    def model_sink(self, data: bytes) -> None:
        self.model.extend(data)
        self._sources.extend([self.current] * len(data))
        self._compare()

    @property
    def missing(self) -> int:
        """Model bytes the RTL has not put out (yet)."""
        return max(len(self.model) - len(self.rtl), 0)

    def _compare(self) -> None:
        rtl, model = self.rtl, self.model
        for i in range(self._checked, min(len(rtl), len(model))):
            if rtl[i] != model[i]:
                raise ConsoleMismatch(f"console byte #{i} from the RTL is {rtl[i]:#04x}, the "
                                      f"model expects {model[i]:#04x} (from {self._sources[i]})")
            self._checked = i + 1

    def describe_missing(self) -> str:
        i = len(self.rtl)
        return (f"{self.missing} console bytes never came from the RTL, the first #{i} = "
                f"{self.model[i]:#04x} (from {self._sources[i]})")

    def check_complete(self, when: str) -> None:
        """The RTL has put out exactly the model's bytes by now (`when` says what "now" is)."""
        if len(self.rtl) > len(self.model):
            i = len(self.model)
            raise ConsoleMismatch(f"{when}: console byte #{i} from the RTL is {self.rtl[i]:#04x}, "
                                  f"with no I/O write for it (the model's stream has {i} bytes)")
        if self.missing:
            raise ConsoleMismatch(f"{when}: {self.describe_missing()}")


async def accesses_match_model(rtl: Host, model: Host, rnd: random.Random, count: int,
                               console: ConsoleCheck, *, console_in_step: bool) -> None:
    """`count` random accesses on both; raise at the first read that differs.

    `console_in_step`: the path hands every console byte to its sink before the I/O write
    that produced it returns (the lock-step endpoint), so after each access the console
    must be complete too, and a lost byte fails at the access that lost it.
    """
    for i in range(count):
        acc = random_access(rnd)
        console.current = f"access #{i}, {acc}"
        if diff := await apply_both(rtl, model, acc):
            raise AccessMismatch(f"access #{i}, {diff}")
        if console_in_step:
            console.check_complete(f"after access #{i}, {acc}")
