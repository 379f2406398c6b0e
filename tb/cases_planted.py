"""Planted faults on the `cosim_top` paths: each case must fail at once with the mismatch
message, not by a timeout (a cocotb test module, run with the others by `tb.regression`).

A planted case passes when it fails exactly as it must: cocotb's `expect_error` with a
`pytest.RaisesExc` checks the exception's type and its message, and the short
`timeout_time` (`PLANTED_LIMIT_US`, far below the 100000-cycle completion timeout and
the 200000-cycle drain) turns a check that only catches the fault by a timeout into a
SimTimeoutError, which does not match: the case then fails, with that error.
Faults are planted with `tb.plant` where the RTL's output enters Python; the real RTL
runs unchanged.  The same cases for the lock-step path are in `tb.cases_lockstep`.

| path | planted | must fail with |
|---|---|---|
| pyuvm scoreboard | console byte #3 wrong | `Mismatch`: byte, expected, seen, the I/O write |
| pyuvm scoreboard | a completion's data wrong | `Mismatch`: request, completion seen, expected |
| pyuvm (endpoint under the driver) | a completion's tag wrong | `UnexpectedCompletion`: the tag |
| endpoint case | console byte #3 wrong | `ConsoleMismatch`: byte, expected, seen, the access |
| endpoint case | a completion's tag wrong | `UnexpectedCompletion`: the tag |
"""

from __future__ import annotations

import dataclasses

import cocotb
import pyuvm
from cocotb.handle import SimHandleBase

from models.contract.transaction import Completion
from tb.access_mix import ConsoleMismatch
from tb.cases_endpoint import host_mix_matches_model
from tb.plant import corrupt_beat, corrupt_console_byte, corrupt_tag, fails_with
from tb.rtl_endpoint import UnexpectedCompletion
from tb.uvm_env import CosimTest
from tb.uvm_scoreboard import Mismatch
from tb.uvm_sequences import DebugconSeq, RngSeq

__all__: list[str] = []

PLANTED_LIMIT_US = 200  # 20000 cycles: every planted case fails within a few thousand
_BYTE = "0x[0-9a-f]{2}"
# Completions before the endpoint mix's random accesses (the reset read-back, enable):
# a planted tag beyond them lands in the mix itself.
_MIX_COMPLETION = 40


def _corrupt_data(item: tuple[int, Completion]) -> tuple[int, Completion]:
    cycle, cpl = item
    return cycle, dataclasses.replace(cpl, data=cpl.data ^ 1)


@pyuvm.test(timeout_time=PLANTED_LIMIT_US, timeout_unit="us", expect_error=fails_with(
    Mismatch, match=rf"console byte #3 is {_BYTE}, the model expects {_BYTE} \(written by "
                    r"IO_WRITE .* accepted at cycle \d+\)"))
class PlantedConsoleByteFailsTheScoreboardAtOnce(CosimTest):
    """A wrong console byte fails the pyuvm scoreboard at that byte."""

    timings = ("fast",)

    async def body(self) -> None:
        await self.enable()
        corrupt_beat(self.ep.console, 3, corrupt_console_byte)
        await self.run(DebugconSeq("planted", self.rng.randbytes(16)))
        await self.drain()


@pyuvm.test(timeout_time=PLANTED_LIMIT_US, timeout_unit="us", expect_error=fails_with(
    Mismatch, match=r"MEM_READ .* \(accepted at cycle \d+\) completed as .*, the model "
                    r"expects "))
class PlantedCompletionDataFailsTheScoreboardAtOnce(CosimTest):
    """A completion with wrong data fails the pyuvm scoreboard at that completion."""

    timings = ("fast",)

    async def body(self) -> None:
        await self.enable()
        corrupt_beat(self.ep.completions, 5, _corrupt_data)
        await self.run(RngSeq("planted", None, 8))
        await self.drain()


@pyuvm.test(timeout_time=PLANTED_LIMIT_US, timeout_unit="us", expect_error=fails_with(
    UnexpectedCompletion, match=r"tag \d+ matches no outstanding request \(outstanding "
                                r"tags: \d+ \(MEM_READ"))
class PlantedCompletionTagFailsAtOnce(CosimTest):
    """A completion with a wrong tag fails the pyuvm test at that completion, naming it."""

    timings = ("fast",)

    async def body(self) -> None:
        await self.enable()
        corrupt_beat(self.ep.completions, 5, corrupt_tag)
        await self.run(RngSeq("planted", None, 8))
        await self.drain()


@cocotb.test(timeout_time=PLANTED_LIMIT_US, timeout_unit="us", expect_error=fails_with(
    ConsoleMismatch, match=rf"console byte #3 from the RTL is {_BYTE}, the model expects "
                           rf"{_BYTE} \(from access #\d+, write IO 0xe"))
async def endpoint_planted_console_byte_fails_at_once(dut: SimHandleBase) -> None:
    """A wrong console byte fails the endpoint case at that byte."""
    await host_mix_matches_model(
        dut, 600, "endpoint_planted_console_byte_fails_at_once",
        plant=lambda ep: corrupt_beat(ep.console, 3, corrupt_console_byte))


@cocotb.test(timeout_time=PLANTED_LIMIT_US, timeout_unit="us", expect_error=fails_with(
    UnexpectedCompletion, match=r"tag \d+ matches no outstanding request \(outstanding "
                                r"tags: \d+ \("))
async def endpoint_planted_completion_tag_fails_at_once(dut: SimHandleBase) -> None:
    """A completion with a wrong tag fails the endpoint case at that completion."""
    await host_mix_matches_model(
        dut, 600, "endpoint_planted_completion_tag_fails_at_once",
        plant=lambda ep: corrupt_beat(ep.completions, _MIX_COMPLETION, corrupt_tag))
