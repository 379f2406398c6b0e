"""Benchmark: how fast the RTL simulates on each simulator (a figure, not a test).

    python -m bench.sim_speed [--sim icarus --sim verilator] [--out out/bench/sim_speed.json]

Measures, per simulator, inside one cocotb run:
- free-running cycles/s: one `Timer` wait of many cycles (no Python per edge);
- transactions/s through the endpoint the QEMU bridge's RTL backend uses per guest access
  (`qbridge.rtl.lockstep_endpoint.LockstepEndpoint` on the lock-step build: HDL clock,
  packed vectors, built
  for speed on Verilator): back-to-back config reads and RNG reads.
With `--full`, also the same figures for the testbench's `tb.rtl_endpoint.RtlEndpoint` on
the testbench build (GPI clock, pyuvm-grade agents), under keys prefixed `tb_`.
Each figure is taken over about `--seconds` of wall time.  This file is both the launcher
(`main`) and the cocotb test module the simulator imports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cocotb
from cocotb.triggers import Timer

from models.contract.regmap import BAR0_TEST_BASE

__all__ = ["main"]

_RESULT_ENV = "COSIM_BENCH_RESULT"
_SECONDS_ENV = "COSIM_BENCH_SECONDS"
BAR0 = BAR0_TEST_BASE


@cocotb.test()
async def sim_speed(dut: object) -> None:
    """Not a check: records speeds into the JSON file named by COSIM_BENCH_RESULT."""
    from tb.rtl_endpoint import RtlEndpoint  # noqa: PLC0415 -- simulator side only

    await _measure(RtlEndpoint(dut))


@cocotb.test()
async def sim_speed_lockstep(dut: object) -> None:
    """The same figures on the lock-step build (toplevel cosim_lockstep)."""
    from qbridge.rtl.lockstep_endpoint import LockstepEndpoint  # noqa: PLC0415 -- simulator side only

    await _measure(LockstepEndpoint(dut))


async def _measure(ep: object) -> None:
    from models.contract.regmap import COMMAND_MEMORY, RNG_REGISTERS  # noqa: PLC0415 -- simulator side
    from models.contract.transaction import Host

    budget = float(os.environ.get(_SECONDS_ENV, "2"))
    await ep.start()  # type: ignore[attr-defined]
    host = Host(ep)  # type: ignore[arg-type]
    await host.cfg_write(0x10, BAR0)
    await host.cfg_write(0x04, COMMAND_MEMORY, 2)

    # Free-running: grow the chunk until one chunk takes a measurable time.
    chunk, cycles, t0 = 1000, 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        await Timer(chunk * ep.period_ns, "ns")  # type: ignore[attr-defined]
        cycles += chunk
        chunk = min(chunk * 2, 1_000_000)
    free = cycles / (time.perf_counter() - t0)

    async def rate(op: object) -> tuple[float, float]:
        n, c0, t = 0, ep.cycle(), time.perf_counter()  # type: ignore[attr-defined]
        while time.perf_counter() - t < budget:
            for _ in range(100):
                await op()  # type: ignore[operator]
            n += 100
        wall = time.perf_counter() - t
        return n / wall, (ep.cycle() - c0) / n  # type: ignore[attr-defined]

    cfg_rate, cfg_cycles = await rate(lambda: host.cfg_read(0x00))
    rng_rate, rng_cycles = await rate(lambda: host.mem_read(BAR0))
    rng64 = next(reg.offset for reg in RNG_REGISTERS if reg.name == "RNG64")
    # The driver's hw_random reads: 8 bytes of RNG64 (two DW requests; one pair on the
    # lock-step path).
    rng64_rate, rng64_cycles = await rate(lambda: host.mem_read(BAR0 + rng64, 8))
    result = {
        "free_running_cycles_per_s": round(free),
        "cfg_reads_per_s": round(cfg_rate),
        "cfg_read_cycles": round(cfg_cycles, 2),
        "rng_reads_per_s": round(rng_rate),
        "rng_read_cycles": round(rng_cycles, 2),
        "rng64_reads_per_s": round(rng64_rate),
        "rng64_read_cycles": round(rng64_cycles, 2),
    }
    Path(os.environ[_RESULT_ENV]).write_text(json.dumps(result))


def _run_one(sim: str, verilog: Path, work: Path, seconds: float, lockstep: bool) -> dict | None:
    from qbridge.rtl.simbuild import build, build_dir_for, run

    name = f"{sim}{'-lockstep' if lockstep else ''}"
    build_dir = build_dir_for(work, sim, False, lockstep)
    runner = build(sim, verilog, build_dir, lockstep=lockstep)
    result_file = work / f"{name}.json"
    result_file.unlink(missing_ok=True)
    run(runner, ["bench.sim_speed"], build_dir, work / f"run-{name}", work / f"{name}.xml",
        testcase=["sim_speed_lockstep" if lockstep else "sim_speed"], lockstep=lockstep,
        extra_env={_RESULT_ENV: str(result_file), _SECONDS_ENV: str(seconds)})
    if not result_file.exists():
        print(f"{name}: benchmark produced no result (see {work / f'run-{name}'}/sim.log)")
        return None
    return json.loads(result_file.read_text())


def _line(label: str, figures: dict) -> str:
    return (f"{label:>16}: {figures['free_running_cycles_per_s']:>10,} cycles/s free-running, "
            f"{figures['cfg_reads_per_s']:>7,} config reads/s "
            f"({figures['cfg_read_cycles']} cycles each), "
            f"{figures['rng_reads_per_s']:>7,} RNG reads/s "
            f"({figures['rng_read_cycles']} cycles each), "
            f"{figures['rng64_reads_per_s']:>7,} 8-byte RNG64 reads/s")


def main(argv: list[str] | None = None) -> int:
    from qbridge.rtl.simbuild import SIMULATORS, generate_verilog

    from models.contract.layout import OUT, rtl_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", action="append", choices=SIMULATORS, default=None)
    parser.add_argument("--out", type=Path, default=OUT / "bench" / "sim_speed.json")
    parser.add_argument("--seconds", type=float, default=2.0, help="wall time per figure")
    parser.add_argument("--full", action="store_true",
                        help="also measure the testbench's RtlEndpoint (keys tb_*)")
    args = parser.parse_args(argv)
    sims = args.sim or list(SIMULATORS)
    work = args.out.resolve().parent / "sim_speed"
    verilog = generate_verilog(rtl_dir())
    report: dict[str, object] = {"clock_period_ns": 10, "simulators": {}}
    for sim in sims:
        figures = _run_one(sim, verilog, work, args.seconds, lockstep=True)
        if figures is None:
            return 1
        print(_line(f"{sim} (bridge)", figures))
        if args.full:
            full = _run_one(sim, verilog, work, args.seconds, lockstep=False)
            if full is None:
                return 1
            print(_line(f"{sim} (tb)", full))
            figures.update({f"tb_{k}": v for k, v in full.items()})
        report["simulators"][sim] = figures  # type: ignore[index]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
