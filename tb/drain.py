"""Waiting for the RTL's streams to run dry, with lost and extra console bytes failing by
assertion rather than by the timeout (shared by the pyuvm drain and the endpoint cases).

Why a lost byte can be told from a slow one: an I/O write's byte enters the RTL's FIFO
on the edge that acknowledges the write, before its completion is offered, and the FIFO
offers it within 2 cycles (rtl/debugcon.py) and keeps `con.valid` high while it holds
anything.  So with no completion outstanding, `con.valid` low at two samples `STEP`
cycles apart while bytes are still expected means those bytes are gone.  And before
returning, both streams must stay idle for `SETTLE` cycles, so that an extra byte (a
duplicate right behind the last expected one) still reaches the checker, which fails on
it, inside the same test.  The timeout stays as the last line of defence: a device that
keeps a stream busy forever.
"""

from __future__ import annotations

from collections.abc import Callable

from cocotb.handle import SimHandleBase
from cocotb.triggers import Timer

__all__ = ["SETTLE", "STEP", "LostConsoleBytes", "drain_streams"]

STEP = 64  # cycles between looks at the checker and the streams
SETTLE = 8  # cycles both streams must stay idle before the drain is over


class LostConsoleBytes(AssertionError):
    """Console bytes were written but the RTL has nothing left to offer."""


def _idle(dut: SimHandleBase) -> bool:
    return not dut.con__valid.value and not dut.cpl__valid.value


async def drain_streams(
    dut: SimHandleBase,
    period_ns: int,
    pending_completions: Callable[[], int],
    pending_console: Callable[[], int],
    describe_missing: Callable[[], str],
    timeout_cycles: int,
) -> None:
    """Return once nothing is pending and `cpl` and `con` stayed idle for `SETTLE` cycles.

    `pending_completions()` / `pending_console()`: what the checker still expects;
    `describe_missing()`: the first missing console byte and its I/O write, for the
    message.  Raises `LostConsoleBytes` as described in the module docstring, and
    AssertionError ("... still pending after N cycles") after `timeout_cycles`.
    """
    idle_before = False
    for _ in range(0, timeout_cycles, STEP):
        idle = _idle(dut)
        if idle and pending_completions() == 0 and pending_console() == 0:
            await Timer(SETTLE * period_ns, "ns")
            if _idle(dut) and pending_completions() == 0 and pending_console() == 0:
                return
            idle = False
        elif idle and idle_before and pending_completions() == 0:
            raise LostConsoleBytes(f"console output idle for {STEP} cycles with no request "
                                   f"outstanding: {describe_missing()}")
        idle_before = idle
        await Timer(STEP * period_ns, "ns")
    raise AssertionError(
        f"{pending_completions()} completions and {pending_console()} console bytes still "
        f"pending after {timeout_cycles} cycles"
    )
