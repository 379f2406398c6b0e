"""pytest entry to the lock-step path's cocotb cases (`tb.cases_lockstep`) on Icarus and Verilator.

The lock-step build (qbridge.rtl.simbuild `lockstep=True`: its wrapper around `cosim_top`,
built for speed on Verilator) is what the QEMU bridge's RTL backend and bench.sim_speed run; its
endpoint is checked against the models here.  Outputs: build/pytest-sim/SIM-lockstep/.
Environment, as tb/test_rtl.py: COSIM_VERILOG=path runs on that `cosim_top.v` (tb.teeth's
mutants), COSIM_TB_OUT=dir moves the outputs.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from qbridge.rtl.simbuild import SIMULATORS, build, build_dir_for, generate_verilog, run

from models.contract.layout import rtl_dir, tb_sim_dir
from tb.regression import failure_text

CASES = (
    "lean_host_accesses_match_model",
    "lean_console_keeps_every_byte_in_order",
    "lean_reset_keeps_console_and_restarts_rng",
    "lean_slow_completion_times_out_instead_of_hanging",
    "lean_other_triggers_fire_during_a_request",
    "lean_planted_console_byte_fails_at_once",
    "lean_planted_completion_tag_fails_at_once",
    "lean_batch_equals_one_request_at_a_time",
    "lean_batch_failure_keeps_console_and_raises",
    "lean_batch_leaves_due_triggers_to_cocotb",
    "lean_stream_equals_batch",
)


def _results(sim: str, seed: int) -> dict[str, str | None]:
    """Run every case on `sim` once; case name -> failure text (None: passed)."""
    out = Path(os.environ.get("COSIM_TB_OUT", tb_sim_dir())) / f"{sim}-lockstep"
    given = os.environ.get("COSIM_VERILOG")
    verilog = Path(given) if given else generate_verilog(rtl_dir())
    build_dir = build_dir_for(out, sim, False, lockstep=True)
    runner = build(sim, verilog, build_dir, lockstep=True)
    xml = out / "results.xml"
    xml.unlink(missing_ok=True)
    run(runner, ["tb.cases_lockstep"], build_dir, out / "run", xml, lockstep=True, seed=seed)
    verdicts: dict[str, str | None] = {}
    if xml.exists():
        for case in ET.parse(xml).iter("testcase"):
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            verdicts[case.get("name", "?")] = None if bad is None else failure_text(bad)
    return verdicts


_CACHE: dict[str, dict[str, str | None]] = {}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sim", SIMULATORS)
def test_lean_case_passes(sim: str, case: str, run_seed: int) -> None:
    if sim not in _CACHE:
        _CACHE[sim] = _results(sim, run_seed)
    verdicts = _CACHE[sim]
    assert case in verdicts, (f"{case} did not run on {sim} (ran: {sorted(verdicts)}; "
                              f"log: build/pytest-sim/{sim}-lockstep/run/sim.log)")
    assert verdicts[case] is None, f"{case} failed on {sim}: {verdicts[case]}"
