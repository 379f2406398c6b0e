"""A record's replay on the RTL: `qbridge.replay` inside the simulator, lock-step.

`replay_on_rtl()` builds the RTL for the simulator exactly as the RTL backend of the
device server does (`qbridge.rtl.simbuild`, lock-step wrapper; the same incremental build
folders, so a replay after a `make vm BACKEND=rtl` builds nothing) and runs this module's
one cocotb test, `replay_record`, which drives the record into a `LockstepEndpoint` --
the object the server serves QEMU from -- and writes the `ReplayResult` as JSON for the
parent.  The job crosses into the simulator as JSON in `REPLAY_ENV`.

Another RTL (`verilog`: a mutant's `cosim_top.v`) is built in `<its folder>/replay-build`:
never in the shared build, whose incremental rebuild goes by file times and would take a
mutant for the real RTL, or the other way round.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cocotb

from models.contract.layout import BUILD, OUT, bridge_sim_root, rtl_dir
from qbridge.record import read_record
from qbridge.replay import Replay, ReplayResult

__all__ = ["REPLAY_ENV", "replay_on_rtl", "replay_record"]

REPLAY_ENV = "QBRIDGE_REPLAY"
MODULE = "qbridge.rtl.replay_sim"


@cocotb.test()
async def replay_record(dut: object) -> None:
    """Replay the record named in REPLAY_ENV on the RTL; the result to its JSON file."""
    from qbridge.rtl.lockstep_endpoint import LockstepEndpoint  # inside the simulator only

    job = json.loads(os.environ[REPLAY_ENV])
    replay = Replay(read_record(Path(job["record"])), job["timing"], job["waves"])
    endpoint = LockstepEndpoint(dut, console_sink=replay.console_sink)
    await endpoint.start()
    result = await replay.run(endpoint, now=endpoint.now)
    Path(job["result"]).write_text(result.to_json())


def replay_on_rtl(record: Path, sim: str, timing: str = "asap", waves: bool = False,
                  verilog: Path | None = None, out: Path | None = None,
                  ) -> tuple[ReplayResult, list[Path]]:
    """Build (incrementally) and replay `record` on `sim`; the result and the wave files
    kept in `out`.  RuntimeError when the simulation produced no result."""
    from qbridge.rtl import private_api
    from qbridge.rtl.simbuild import build, build_dir_for, generate_verilog, run

    os.environ.pop("PYTEST_CURRENT_TEST", None)  # the runner would sys.exit() under pytest
    private_api.check_versions()
    if verilog is None:
        sim_root = bridge_sim_root(sim, BUILD)
        verilog = generate_verilog(rtl_dir(BUILD))
    else:
        sim_root = bridge_sim_root(sim, verilog.resolve().parent / "replay-build")
        verilog = verilog.resolve()
    out = (out or OUT / f"replay-{sim}").resolve()
    build_dir = build_dir_for(sim_root, sim, waves, lockstep=True)
    runner = build(sim, verilog, build_dir, waves, lockstep=True)
    run_dir = sim_root / f"replay-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    result_file = run_dir / "replay.json"
    job = {"record": str(record.resolve()), "timing": timing, "waves": waves,
           "result": str(result_file)}
    run(runner, [MODULE], build_dir, run_dir, run_dir / "results.xml", waves=waves,
        lockstep=True, extra_env={REPLAY_ENV: json.dumps(job)})
    out.mkdir(parents=True, exist_ok=True)
    if not result_file.exists():
        kept = out / "sim.log"
        if (run_dir / "sim.log").exists():
            shutil.copyfile(run_dir / "sim.log", kept)
        raise RuntimeError(f"the {sim} simulation of the replay gave no result (see {kept})")
    result = ReplayResult.from_json(result_file.read_text())
    kept_waves: list[Path] = []
    if waves:
        # Verilator dumps into the run folder, Icarus into its build folder.
        for wave in [*run_dir.glob("*.fst"), *build_dir.glob("*.fst")]:
            dest = out / wave.name
            shutil.copy2(wave, dest)
            kept_waves.append(dest)
    shutil.rmtree(run_dir, ignore_errors=True)
    return result, kept_waves
