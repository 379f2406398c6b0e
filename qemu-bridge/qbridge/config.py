"""The device server's configuration: one typed object, serialised as itself.

The RTL backend runs the server inside a simulator process, which we cannot hand
arguments to; the configuration crosses into it as JSON in one environment variable
(`CONFIG_ENV`).  `to_json`/`from_json` convert every field by its declared type, so a
new path field needs no list of which keys are paths.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from models.contract.layout import BUILD

__all__ = ["CONFIG_ENV", "TRANSPORTS", "ServerConfig"]

CONFIG_ENV = "QBRIDGE_CONFIG"
# The device protocols we serve: QEMU 7.2's x-pci-proxy-dev (qbridge.proxy) and vfio-user
# (qbridge.vfio_user, QEMU >= 10.1's vfio-user-pci).  The first is the default.
TRANSPORTS = ("proxy", "vfio-user")
ACCEPT_TIMEOUT_S = 120.0  # the launcher connects right after the ready file appears


@dataclass(frozen=True)
class ServerConfig:
    """What one device-server run serves, from where, and where its outputs go."""

    backend: str  # "model" or "rtl"
    capture: Path  # the device's console output (created or truncated at start)
    transport: str = TRANSPORTS[0]  # the protocol QEMU speaks on the transport socket
    sim: str = "icarus"  # simulator of the RTL backend
    waves: bool = False  # RTL backend: record FST waves in the run folder
    transport_fd: int | None = None  # inherited, connected end of a socketpair
    transport_listen: Path | None = None  # or: listen here and accept one connection
    debugcon_listen: Path | None = None  # listen here for QEMU's isa-debugcon chardev
    txlog: Path | None = None  # one line per transaction
    record: Path | None = None  # what the device saw, for replay (qbridge.record)
    log: Path | None = None  # server log (debug level)
    ready_file: Path | None = None  # written once all listening sockets exist
    accept_timeout: float = ACCEPT_TIMEOUT_S
    build_dir: Path = field(default=BUILD)  # RTL backend: its Verilog and simulator builds

    def __post_init__(self) -> None:
        if self.backend not in ("model", "rtl"):
            raise ValueError(f"backend must be 'model' or 'rtl', not {self.backend!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, "
                             f"not {self.transport!r}")
        if (self.transport_fd is None) == (self.transport_listen is None):
            raise ValueError("exactly one of transport_fd and transport_listen must be given")
        # Absolute from here on: the RTL backend's simulator runs in its own folder, where
        # a relative path would name another file.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                object.__setattr__(self, f.name, Path(os.path.abspath(value)))

    def to_json(self) -> str:
        return json.dumps({f.name: _plain(getattr(self, f.name))
                           for f in dataclasses.fields(self)})

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        raw: dict[str, Any] = json.loads(text)
        hints = get_type_hints(cls)
        unknown = set(raw) - set(hints)
        if unknown:
            raise ValueError(f"unknown configuration fields: {sorted(unknown)}")
        return cls(**{name: _typed(hints[name], value) for name, value in raw.items()})


def _plain(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


def _typed(hint: object, value: object) -> object:
    """`value` from JSON as the field's declared type (only Path needs converting)."""
    if value is not None and Path in (getattr(hint, "__args__", ()) or (hint,)):
        return Path(str(value))
    return value
