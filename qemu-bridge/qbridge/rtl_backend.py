"""The RTL backend of the device server: the same `DeviceServer.serve()`, inside cocotb.

`python -m qbridge.server --backend rtl --sim S ...` calls `run_simulation()`, which
generates `build/rtl/cosim_top.v`, builds it for S (incremental) in
`build/bridge-sim/S/` wrapped in the lean lock-step wrapper (`tb.lean_wrapper`; built for
speed on Verilator), and runs this module as the simulation's only cocotb test; the
parsed command line travels in the environment variable QBRIDGE_ARGS.  The test
`serve_qemu` opens the sockets, writes the ready file, accepts the proxy connection,
starts `tb.lean_endpoint.LeanRtlEndpoint` (clock in HDL, reset) and serves QEMU in
lock-step: while QEMU is idle the coroutine blocks in poll() and simulated time stands
still; each request advances it exactly as long as the RTL needs (toolchain-facts.md).
The lean endpoint does 3 simulator crossings per request instead of the testbench
agents' dozen (bench.sim_speed measures both).

Failure reporting: the simulator's own output goes to `sim.log` in the run folder; the
first line of an error inside the simulation is written to the file named by
QBRIDGE_ERROR_FILE, which the parent process turns into its one-line error and non-zero
exit.  A simulator that dies without results is a backend failure too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import cocotb
from cocotb.simtime import get_sim_time

from qbridge.proxy_protocol import ProtocolError
from qbridge.server import ARGS_ENV, open_bridge_io, serve_with, setup_logging

__all__ = ["run_simulation", "serve_qemu"]

log = logging.getLogger("cosim.bridge.rtl")

ERROR_ENV = "QBRIDGE_ERROR_FILE"
MODULE = "qbridge.rtl_backend"


def _args_from_env() -> argparse.Namespace:
    raw = json.loads(os.environ[ARGS_ENV])
    paths = {"proxy_listen", "debugcon_listen", "capture", "txlog", "log", "ready_file",
             "build_dir"}
    return argparse.Namespace(**{k: Path(v) if k in paths and v is not None else v
                                 for k, v in raw.items()})


def _report(message: str) -> None:
    path = os.environ.get(ERROR_ENV)
    if path:
        Path(path).write_text(message.splitlines()[0] if message else "unknown error")


@cocotb.test()
async def serve_qemu(dut: object) -> None:
    """Serve one QEMU connection from the RTL until QEMU closes it."""
    from tb.lean_endpoint import LeanRtlEndpoint  # cocotb-only imports, inside the simulator

    args = _args_from_env()
    setup_logging(args.log, append=True)
    try:
        with open_bridge_io(args) as bio:
            endpoint = LeanRtlEndpoint(dut, console_sink=bio.console_sink)
            # Accept before starting the clock: until QEMU is there, nothing should happen.
            server = serve_with(endpoint, bio, args, now=endpoint.now)
            await endpoint.start()
            log.info("RTL up on %s at %s ns", args.sim, get_sim_time("ns"))
            await server.serve()
            # Console bytes of the last I/O writes may still be in the RTL's FIFO.
            await endpoint.drain_console()
            log.info("%d transactions in %d exchanges with the wrapper, %d of them served "
                     "by the main loop directly", endpoint.transactions, endpoint.exchanges,
                     endpoint.direct_steps)
            if endpoint.errors:
                raise RuntimeError(f"RTL endpoint errors: {endpoint.errors[0]}")
    except ProtocolError as exc:
        log.error("protocol error: %s", exc)
        _report(f"protocol error: {exc}")
        raise
    except BaseException as exc:
        log.error("backend failure: %s: %s", type(exc).__name__, exc)
        _report(f"backend failure: {type(exc).__name__}: {exc}")
        raise
    log.info("simulation ends at %s ns", get_sim_time("ns"))


def run_simulation(args: argparse.Namespace) -> int:
    """Build the RTL for `args.sim` and run `serve_qemu` in it; the process's exit status."""
    from cocotb_tools.check_results import get_results

    from tb.build import build, build_dir_for, generate_verilog, run

    # Under pytest the runner would sys.exit() on a failed test instead of returning: we
    # are a separate process that reports for itself.
    os.environ.pop("PYTEST_CURRENT_TEST", None)
    # The runner's own messages ("Skipping compilation ...") belong in --log, not on
    # stderr, where only our one-line error goes.
    root = logging.getLogger()
    root.addHandler(logging.NullHandler())
    for handler in logging.getLogger("cosim").handlers:
        if isinstance(handler, logging.FileHandler):
            root.addHandler(handler)
            root.setLevel(logging.INFO)
    waves = bool(args.waves)
    # Absolute: the simulator runs in the run folder, and the wave dump path is baked in.
    sim_root = args.build_dir.resolve() / "bridge-sim" / args.sim
    verilog = generate_verilog(args.build_dir.resolve() / "rtl")
    build_dir = build_dir_for(sim_root, args.sim, waves, lean=True)
    runner = build(args.sim, verilog, build_dir, waves, lean=True)
    run_dir = sim_root / f"run-{os.getpid()}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    error_file = run_dir / "error.txt"
    run_dir.mkdir(parents=True)
    log.info("simulating on %s in %s (waves %s)", args.sim, run_dir, waves)
    try:
        results = run(runner, [MODULE], build_dir, run_dir,
                      run_dir / "results.xml", waves=waves, lean=True,
                      extra_env={ARGS_ENV: os.environ[ARGS_ENV], ERROR_ENV: str(error_file)})
    except RuntimeError as exc:  # the simulator exited non-zero
        detail = f" after: {error_file.read_text()}" if error_file.exists() else ""
        log.error("simulator failed (%s)%s; see %s", exc, detail, run_dir / "sim.log")
        return 1
    try:
        tests, failed = get_results(Path(results))
    except RuntimeError:
        tests, failed = 0, 1
    if tests == 0 or failed:
        detail = error_file.read_text() if error_file.exists() else "no result recorded"
        log.error("%s (simulation log: %s)", detail, run_dir / "sim.log")
        return 1
    if not waves:  # nothing worth keeping from a good run
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0
