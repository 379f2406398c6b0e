"""The RTL backend of the device server: the same core session, inside cocotb.

`python -m qbridge.server --backend rtl --sim S ...` calls `run_simulation()`, which
generates the RTL's Verilog, builds it for S (incremental) wrapped in the lock-step
wrapper (`qbridge.rtl.lockstep_wrapper`, built for speed on Verilator; folders from
`models.contract.layout`), and runs this module as the simulation's only cocotb test.
The `ServerConfig` travels into the simulator as JSON in QBRIDGE_CONFIG.  The test
`serve_qemu` opens the sockets, writes the ready file, accepts the connection, starts
`qbridge.rtl.lockstep_endpoint.LockstepEndpoint` (clock in HDL, reset) and serves QEMU
in lock-step: while QEMU is idle the coroutine blocks in poll() and simulated time
stands still; each request advances it exactly as long as the RTL needs
(docs/bridge-protocol.md).  The lock-step endpoint does 3 simulator crossings per
request instead of the testbench agents' dozen (bench.sim_speed measures both).

Failure reporting: the simulator's own output goes to `sim.log` in the run folder; the
first line of an error inside the simulation is written to the file named by
QBRIDGE_ERROR_FILE, which the parent process turns into its one-line error and non-zero
exit.  A simulator that dies without results is a backend failure too.  Installed
cocotb/Verilator versions other than those the runtime's private-API uses were written
for are refused first (`qbridge.rtl.private_api`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import cocotb
from cocotb.simtime import get_sim_time

from models.contract.layout import bridge_sim_root, rtl_dir
from qbridge.config import CONFIG_ENV, ServerConfig
from qbridge.core import ProtocolError
from qbridge.rtl import private_api
from qbridge.session import open_bridge_io, serve_with, setup_logging

__all__ = ["run_simulation", "serve_qemu"]

log = logging.getLogger("cosim.bridge.rtl")

ERROR_ENV = "QBRIDGE_ERROR_FILE"
MODULE = "qbridge.rtl.backend"


def _report(message: str) -> None:
    path = os.environ.get(ERROR_ENV)
    if path:
        Path(path).write_text(message.splitlines()[0] if message else "unknown error")


@cocotb.test()
async def serve_qemu(dut: object) -> None:
    """Serve one QEMU connection from the RTL until QEMU closes it."""
    from qbridge.rtl.lockstep_endpoint import LockstepEndpoint  # inside the simulator only

    args = ServerConfig.from_json(os.environ[CONFIG_ENV])
    setup_logging(args.log, append=True)
    try:
        private_api.check_versions()
        with open_bridge_io(args) as bio:
            endpoint = LockstepEndpoint(dut, console_sink=bio.console_sink)
            # Accept before starting the clock: until QEMU is there, nothing should happen.
            server = serve_with(endpoint, bio, args, now=endpoint.now,
                                batch_stamps=endpoint.batch_stamps)
            await endpoint.start()
            log.info("RTL up on %s at %s ns", args.sim, get_sim_time("ns"))
            await server.serve()  # ends with the RTL FIFO's last console bytes drained
            log.info("%d transactions in %d exchanges with the wrapper, %d of them served "
                     "by the main loop directly", endpoint.transactions, endpoint.exchanges,
                     endpoint.direct_steps)
    except ProtocolError as exc:
        log.error("protocol error: %s", exc)
        _report(f"protocol error: {exc}")
        raise
    except BaseException as exc:
        log.error("backend failure: %s: %s", type(exc).__name__, exc)
        _report(f"backend failure: {type(exc).__name__}: {exc}")
        raise
    log.info("simulation ends at %s ns", get_sim_time("ns"))


def run_simulation(args: ServerConfig) -> int:
    """Build the RTL for `args.sim` and run `serve_qemu` in it; the process's exit status."""
    from cocotb_tools.check_results import get_results

    from qbridge.rtl.simbuild import build, build_dir_for, generate_verilog, run

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
    try:
        private_api.check_versions()
    except private_api.UnsupportedVersion as exc:
        log.error("%s", exc)
        return 1
    waves = args.waves
    # Absolute: the simulator runs in the run folder, and the wave dump path is baked in.
    sim_root = bridge_sim_root(args.sim, args.build_dir.resolve())
    verilog = generate_verilog(rtl_dir(args.build_dir.resolve()))
    build_dir = build_dir_for(sim_root, args.sim, waves, lockstep=True)
    runner = build(args.sim, verilog, build_dir, waves, lockstep=True)
    run_dir = sim_root / f"run-{os.getpid()}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    error_file = run_dir / "error.txt"
    run_dir.mkdir(parents=True)
    log.info("simulating on %s in %s (waves %s)", args.sim, run_dir, waves)
    try:
        results = run(runner, [MODULE], build_dir, run_dir,
                      run_dir / "results.xml", waves=waves, lockstep=True,
                      extra_env={CONFIG_ENV: args.to_json(), ERROR_ENV: str(error_file)})
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
