"""Planted faults: make the testbench see a wrong console byte or a wrong completion tag,
to prove that the checks fail at once with their mismatch message (`tb.cases_planted`,
the planted cases of `tb.cases_lockstep`).

The fault is planted where the RTL's output enters Python -- the sink monitor's beat on
`RtlEndpoint`, the response word on `LockstepEndpoint` -- so everything downstream that
a real RTL bug would go through (endpoint, scoreboard or case comparator, the cocotb test
outcome) runs unchanged; a planted fault costs no RTL rebuild (tb.teeth's mutants do the
same through the RTL itself, much more slowly).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from models.contract.transaction import Completion, Request
from tb.stream_sink import StreamSink

if TYPE_CHECKING:  # the lock-step endpoint is only there in lock-step simulations
    from qbridge.rtl.lockstep_endpoint import LockstepEndpoint

__all__ = ["TAG_FLIP", "corrupt_beat", "corrupt_console_byte", "corrupt_lockstep_console",
           "corrupt_lockstep_tag", "corrupt_tag", "fails_with"]

log = logging.getLogger("cosim.tb.plant")

TAG_FLIP = 0x80  # what the completion_tag mutant gets wrong: tag bit 7


def fails_with(exc: type[BaseException], match: str) -> tuple[pytest.RaisesExc[Any]]:
    """`expect_error` of a planted case: an exception of type `exc` whose message matches
    the regular expression `match` (anything else, a timeout too, fails the case)."""
    return (pytest.RaisesExc(exc, match=match),)


def corrupt_beat(sink: StreamSink, index: int, corrupt: Callable[[Any], Any]) -> None:
    """Pass beat `index` (0-based, counted from now) that `sink` reports through `corrupt`."""
    original = sink._beat  # noqa: SLF001 -- the one place the beat's payload is captured
    seen = 0

    def beat(cycle: int) -> Any:
        nonlocal seen
        item = original(cycle)
        if seen == index:
            item = corrupt(item)
            log.info("planted fault on %s beat #%d: reported as %s", sink.name, index, item)
        seen += 1
        return item

    sink._beat = beat  # type: ignore[method-assign]


def corrupt_console_byte(item: tuple[int, int]) -> tuple[int, int]:
    cycle, byte = item
    return cycle, byte ^ 0xFF


def corrupt_tag(item: tuple[int, Completion]) -> tuple[int, Completion]:
    cycle, cpl = item
    return cycle, dataclasses.replace(cpl, tag=cpl.tag ^ TAG_FLIP)


def corrupt_lockstep_tag(ep: LockstepEndpoint, index: int) -> None:
    """Flip `TAG_FLIP` in the tag of the response to `ep`'s non-posted exchange `index`
    (0-based, counted from now): the response word is where the RTL's completion enters
    Python on the lock-step path, on both simulators (Verilator's direct exchange too)."""
    from qbridge.rtl.lockstep_endpoint import _TAG  # noqa: PLC0415 -- the response layout

    original = ep._exchange  # noqa: SLF001
    seen = 0

    async def exchange(req: Request, pair: Request | None = None) -> int:
        nonlocal seen
        rsp = await original(req, pair)
        if not req.kind.posted:
            if seen == index:
                rsp ^= TAG_FLIP << _TAG
                log.info("planted fault: completion tag of %s flipped by %#x", req, TAG_FLIP)
            seen += 1
        return rsp

    ep._exchange = exchange  # type: ignore[method-assign]


def corrupt_lockstep_console(ep: LockstepEndpoint, index: int) -> None:
    """Hand console byte `index` (0-based, counted from now) to `ep`'s sink with every bit
    flipped: the sink call is where the ring's bytes leave the lock-step endpoint."""
    original = ep._console_sink  # noqa: SLF001
    assert original is not None, "the endpoint has no console sink to plant a fault in"
    seen = 0

    def sink(data: bytes) -> None:
        nonlocal seen
        if seen <= index < seen + len(data):
            at = index - seen
            data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
            log.info("planted fault: console byte #%d handed on as %#04x", index, data[at])
        seen += len(data)
        original(data)

    ep._console_sink = sink  # noqa: SLF001
