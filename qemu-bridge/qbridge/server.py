"""The device server's command line: serves QEMU's device protocol from a backend.

    python -m qbridge.server --backend {model|rtl} [--sim {icarus|verilator}] [--waves 0|1]
        [--transport {proxy|vfio-user}] (--transport-fd N | --transport-listen PATH)
        [--debugcon-listen PATH] --capture FILE [--txlog FILE] [--record FILE] [--log FILE]
        [--ready-file FILE]

The model backend is served here; the RTL backend runs the same session inside a
simulator (`qbridge.rtl.backend`), its configuration crossing as one `ServerConfig`.
The server itself is `qbridge.core` with a transport (`qbridge.proxy` for QEMU 7.2's
x-pci-proxy-dev, `qbridge.vfio_user` for vfio-user-pci); protocols,
message sequences and decisions: docs/bridge-protocol.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from models.contract.layout import BUILD
from qbridge.config import ACCEPT_TIMEOUT_S, TRANSPORTS, ServerConfig
from qbridge.core import ProtocolError
from qbridge.session import open_bridge_io, serve_with, setup_logging

__all__ = ["main", "parse_args"]

log = logging.getLogger("cosim.bridge")


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    p = argparse.ArgumentParser(prog="python -m qbridge.server", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("model", "rtl"), required=True)
    p.add_argument("--sim", choices=("icarus", "verilator"), default="icarus",
                   help="simulator of the RTL backend (default icarus)")
    p.add_argument("--waves", type=int, choices=(0, 1), default=0,
                   help="RTL backend: record FST waves in the build folder")
    p.add_argument("--transport", choices=TRANSPORTS, default=TRANSPORTS[0],
                   help=f"the device protocol QEMU speaks (default {TRANSPORTS[0]})")
    conn = p.add_mutually_exclusive_group(required=True)
    conn.add_argument("--transport-fd", type=int, metavar="N",
                      help="inherited, connected end of a socketpair (model backend)")
    conn.add_argument("--transport-listen", type=Path, metavar="PATH",
                      help="listen on this Unix socket and accept one connection (vfio-user: "
                           "QEMU connects here)")
    p.add_argument("--debugcon-listen", type=Path, metavar="PATH",
                   help="listen here for QEMU's -chardev socket of isa-debugcon")
    p.add_argument("--capture", type=Path, required=True, metavar="FILE",
                   help="the device's console output (created or truncated at start)")
    p.add_argument("--txlog", type=Path, metavar="FILE", help="one line per transaction")
    p.add_argument("--record", type=Path, metavar="FILE",
                   help="record what the device saw, for python -m qbridge.replay")
    p.add_argument("--log", type=Path, metavar="FILE", help="server log (debug level)")
    p.add_argument("--ready-file", type=Path, metavar="FILE",
                   help="written once all listening sockets exist")
    p.add_argument("--accept-timeout", type=float, default=ACCEPT_TIMEOUT_S, metavar="S",
                   help=f"--transport-listen: wait this long for the connection "
                        f"(default {ACCEPT_TIMEOUT_S:g})")
    p.add_argument("--build-dir", type=Path, default=BUILD, metavar="DIR",
                   help="RTL backend: build/rtl and build/bridge-sim/<sim> live here")
    args = p.parse_args(argv)
    if args.backend == "rtl" and args.transport_fd is not None:
        p.error("--backend rtl runs inside a simulator process, which cannot inherit an fd: "
                "use --transport-listen")
    values = vars(args)
    values["waves"] = bool(values["waves"])
    return ServerConfig(**values)


async def _serve_model(config: ServerConfig) -> None:
    from models.device import Device

    with open_bridge_io(config) as io:
        server = serve_with(Device(console_sink=io.console_sink), io, config)
        await server.serve()


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log)
    try:
        if config.backend == "rtl":
            from qbridge.rtl.backend import run_simulation

            return run_simulation(config)
        asyncio.run(_serve_model(config))
    except ProtocolError as exc:
        log.error("protocol error: %s", exc)
        return 1
    except (OSError, TimeoutError) as exc:
        log.error("%s", exc)
        return 1
    except Exception as exc:  # a backend failure: say what, keep the trace in --log
        log.debug("backend failure", exc_info=True)
        log.error("backend failure: %s: %s", type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
