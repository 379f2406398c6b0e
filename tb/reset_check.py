"""Reset read-back: after every reset, before anything writes the device, its state is read
and compared with the register map's reset values.

Why: every case programs BAR0 and COMMAND right after a reset, so a register that keeps
its value across a reset was only caught when a random read happened to come before
the rewrite (the same RTL passed and failed from run to run).  The expected values come
from `models.contract.regmap` (CONFIG_DWORDS' reset values, the RNG registers' values),
not from `models.device`: the model is built from the same map, but a model that kept a
register across reset too would agree with such an RTL.

What is read, each as a 4-byte access:
- config space: every DW of the type-0 header (0x00-0x3c) and every implemented DW
  (`CONFIG_DWORDS`); unimplemented ones read 0;
- BAR0 (memory decoding enabled for it, then the config written back to its reset
  values, so the read-back leaves the device as the reset did): every DW of every
  register whose read has no side effect (ID and CAPS: their values; SEED: write-only,
  reads 0) and unused offsets (read 0): the two DWs after the map, the middle and the
  last DW of BAR0.  RNG and RNG64 are not read: a read advances the generator.

Used by every path that resets: the pyuvm tests (`tb.uvm_env.CosimTest` after the reset
of `start()`, `tb.uvm_item.SequenceEndpoint.reset` after every other), the endpoint
cases and the lock-step cases (`start_checked`, `reset_checked`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from models.contract.regmap import (
    BAR0_SIZE,
    BAR0_TEST_BASE,
    COMMAND_MEMORY,
    CONFIG_DWORDS,
    RNG_REGISTERS,
    Access,
)
from models.contract.transaction import Endpoint, Host, Space

__all__ = [
    "BAR0_RESET_VALUES",
    "CONFIG_HEADER_SIZE",
    "CONFIG_RESET_VALUES",
    "ResetStateMismatch",
    "ResetValue",
    "ResettableEndpoint",
    "check_reset_state",
    "reset_checked",
    "start_checked",
]

log = logging.getLogger("cosim.tb.reset_check")

CONFIG_HEADER_SIZE = 0x40  # the type-0 header (PCI 3.0, 6.1)
_COMMAND = next(off for off, d in CONFIG_DWORDS.items() if d.name == "COMMAND_STATUS")
_BAR0 = next(off for off, d in CONFIG_DWORDS.items() if d.name == "BAR0")


@dataclass(frozen=True)
class ResetValue:
    space: Space  # CFG: `offset` is a config offset; MEM: an offset inside BAR0
    offset: int
    value: int
    name: str


def _config_values() -> tuple[ResetValue, ...]:
    offsets = sorted(set(range(0, CONFIG_HEADER_SIZE, 4)) | set(CONFIG_DWORDS))
    values = []
    for off in offsets:
        dword = CONFIG_DWORDS.get(off)
        values.append(ResetValue(Space.CFG, off, dword.reset if dword else 0,
                                 dword.name if dword else "unimplemented"))
    return tuple(values)


def _bar0_values() -> tuple[ResetValue, ...]:
    values = []
    for reg in RNG_REGISTERS:
        if reg.next_number:
            continue  # RNG, RNG64: reading advances the generator
        if reg.access is Access.RO and reg.value is not None:
            value = reg.value
        elif reg.access is Access.W:
            value = 0  # write-only: reads return 0 (regmap.Access.W)
        elif reg.access in (Access.RW, Access.RW1C, Access.RO):
            value = reg.reset  # state (DMA_*, INT_STATUS): reading it has no effect
        else:
            # A new kind of register: say what its reads return before reading it here.
            raise ValueError(f"no side-effect-free reset value for {reg.name} ({reg.access})")
        values += [ResetValue(Space.MEM, dw, value >> 8 * (dw - reg.offset) & 0xFFFF_FFFF,
                              reg.name) for dw in reg.dwords]
    end = max(r.offset + r.size for r in RNG_REGISTERS)  # every offset from here is unused
    for off in (end, end + 4, BAR0_SIZE // 2, BAR0_SIZE - 4):
        values.append(ResetValue(Space.MEM, off, 0, "unused"))
    return tuple(values)


CONFIG_RESET_VALUES: tuple[ResetValue, ...] = _config_values()
BAR0_RESET_VALUES: tuple[ResetValue, ...] = _bar0_values()


class ResetStateMismatch(AssertionError):
    """A register read after a reset differs from the register map's reset value."""


async def check_reset_state(host: Host, when: str) -> None:
    """Read everything `CONFIG_RESET_VALUES` and `BAR0_RESET_VALUES` list; raise
    `ResetStateMismatch` at the first value that differs.  Call right after the reset."""
    for rv in CONFIG_RESET_VALUES:
        _expect(when, rv, await host.cfg_read(rv.offset))
    # BAR0 answers only once placed and enabled: the two writes the check needs.
    await host.cfg_write(_BAR0, BAR0_TEST_BASE)
    await host.cfg_write(_COMMAND, COMMAND_MEMORY, 2)
    for rv in BAR0_RESET_VALUES:
        _expect(when, rv, await host.mem_read(BAR0_TEST_BASE + rv.offset))
    # Back to the reset values, so that what the test does next starts from reset state.
    await host.cfg_write(_COMMAND, CONFIG_DWORDS[_COMMAND].reset)
    await host.cfg_write(_BAR0, CONFIG_DWORDS[_BAR0].reset)
    log.debug("%s: %d config DWs and %d BAR0 DWs read back as the register map says", when,
              len(CONFIG_RESET_VALUES), len(BAR0_RESET_VALUES))


def _expect(when: str, rv: ResetValue, got: int) -> None:
    if got != rv.value:
        where = "config DW" if rv.space is Space.CFG else "BAR0 DW"
        raise ResetStateMismatch(
            f"{when}: {where} {rv.offset:#05x} ({rv.name}) reads {got:#010x}, the register "
            f"map's reset value is {rv.value:#010x}")


class ResettableEndpoint(Endpoint, Protocol):
    """An endpoint that is started (clock, first reset) before use: the RTL's two."""

    async def start(self) -> None: ...


async def start_checked(ep: ResettableEndpoint) -> Host:
    """`ep.start()` (which resets), then the read-back; a `Host` on `ep`."""
    await ep.start()
    host = Host(ep)
    await check_reset_state(host, "after the reset of start()")
    return host


async def reset_checked(ep: ResettableEndpoint) -> None:
    """`ep.reset()`, then the read-back."""
    await ep.reset()
    await check_reset_state(Host(ep), "after a reset")
