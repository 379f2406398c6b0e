"""Reference for the free-running figure: cosim_top in a plain Verilator C++ harness.

    python -m bench.verilator_ref [--cycles N] [--runs N]

Builds bench/verilator_ref.cpp with the generated Verilog (build/rtl/cosim_top.v) into
build/bench/verilator_ref/ (a build output, never committed) and prints cycles/s per run.
The issue's target compares cocotb's free-running rate on Verilator (bench.sim_speed)
with this one on the same design.  `measure()` is what bench.run calls.
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path

from models.contract.layout import BUILD, REPO, rtl_dir

__all__ = ["build", "main", "measure"]

log = logging.getLogger("cosim.bench")

HARNESS = Path(__file__).resolve().with_name("verilator_ref.cpp")
WORK = BUILD / "bench" / "verilator_ref"
_RESULT = re.compile(r"VREF cycles=(\d+) seconds=([\d.]+) cycles_per_s=(\d+)")
_BUILD_TIMEOUT = 600


def build() -> Path:
    """Verilate and compile the harness (-O3, like a user's own C++ testbench)."""
    from qbridge.childenv import child_env
    from qbridge.rtl.simbuild import generate_verilog

    verilog = generate_verilog(rtl_dir())
    WORK.mkdir(parents=True, exist_ok=True)
    exe = WORK / "vref"
    cmd = ["verilator", "--cc", "--exe", "--build", "-O3", "-Wno-fatal",
           "--top-module", "cosim_top", "-Mdir", str(WORK), "-o", "vref",
           "-CFLAGS", "-O2", str(verilog), str(HARNESS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT,
                          check=False, cwd=REPO, env=child_env())
    (WORK / "build.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not exe.is_file():
        raise RuntimeError(f"verilator harness build failed (log {WORK / 'build.log'}): "
                           f"{proc.stderr.strip()[-300:]}")
    return exe


def measure(cycles: int, runs: int) -> list[float]:
    """cycles/s of `runs` runs of the harness over `cycles` clock cycles each."""
    exe = build()
    rates = []
    for _ in range(runs):
        out = subprocess.run([str(exe), str(cycles)], capture_output=True, text=True,
                             timeout=600, check=True).stdout
        m = _RESULT.search(out)
        if m is None:
            raise RuntimeError(f"unexpected harness output: {out!r}")
        rates.append(float(m.group(3)))
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=20_000_000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    for rate in measure(args.cycles, args.runs):
        print(f"{rate:,.0f} cycles/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
