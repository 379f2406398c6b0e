"""The fence around cocotb's and Verilator's internals: every use of them is here.

The lock-step RTL runtime is fast because it bypasses public APIs where they cost most
of a guest access (bench/README.md):
- signals written and read through cocotb's GPI objects (`handle._handle`) with plain
  ints, written at once (`_GPISetAction.NO_DELAY`), instead of `.value` and LogicArray;
- the simulation time read from `cocotb.simulator` without unit conversion;
- cocotb's Verilator runner with its `_build_command` edited (no `--public-flat-rw`, our
  main loop instead of cocotb's `verilator.cpp`, `OPT_FAST=-O2`);
- `verilator_main.cpp`, a trimmed copy of cocotb's main loop calling `VerilatedVpi`'s
  callback queues to serve a request without cocotb's scheduler.
None of these is promised to stay.  So `check_versions()` runs first, before any build
and inside the simulator, and refuses versions other than those this code was written
and measured against, with one sentence naming both.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from cocotb_tools.runner import Verilator

__all__ = [
    "MAIN_CPP",
    "SUPPORTED",
    "FastVerilator",
    "UnsupportedVersion",
    "check_versions",
    "gpi",
    "installed_versions",
    "is_two_state",
    "precision",
    "sim_steps",
    "write_now",
]

# Distribution name -> the one version whose internals this module uses.
SUPPORTED = {"cocotb": "2.1.0", "verilator": "5.48.0"}
MAIN_CPP = Path(__file__).resolve().with_name("verilator_main.cpp")
_NO_DELAY = 3  # cocotb.handle._GPISetAction.NO_DELAY in cocotb 2.1: write now


class UnsupportedVersion(RuntimeError):
    """The installed cocotb or Verilator is not the one the lock-step runtime supports."""


def installed_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in SUPPORTED:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def check_versions(installed: dict[str, str | None] | None = None) -> None:
    """Raise UnsupportedVersion unless the supported versions are installed."""
    have = installed_versions() if installed is None else installed
    wrong = {d: v for d, v in have.items() if v != SUPPORTED[d]}
    if wrong:
        want = " and ".join(f"{d} {v}" for d, v in SUPPORTED.items())
        got = ", ".join(f"{d} {v or 'not installed'}" for d, v in have.items())
        raise UnsupportedVersion(
            f"the lock-step RTL runtime uses internals of {want} only, but {got} is "
            "installed: install the pinned versions of pyproject.toml")


def gpi(signal: object) -> object:
    """The GPI object behind a cocotb handle (`set_signal_val_int`, `get_signal_val_*`)."""
    return signal._handle  # type: ignore[attr-defined]


def write_now(raw: object, value: int) -> None:
    """Write `value` to a GPI object at once (not at the next ReadWrite phase)."""
    raw.set_signal_val_int(_NO_DELAY, value)  # type: ignore[attr-defined]


def sim_steps() -> int:
    """The simulation time in simulator precision steps, without unit conversion."""
    import cocotb

    high, low = cocotb.simulator.get_sim_time()
    return (high << 32) | low


def precision() -> int:
    """The simulator's time precision as a power of ten (e.g. -12 for 1 ps)."""
    import cocotb

    return cocotb.simulator.get_precision()  # type: ignore[no-any-return]


def is_two_state() -> bool:
    """Verilator (2-state, our main loop) rather than Icarus (4-state, cocotb's path)."""
    import cocotb

    return "verilator" in cocotb.SIM_NAME.lower()


class FastVerilator(Verilator):
    """cocotb's Verilator runner, built for speed (lock-step builds).

    The runner always passes `--public-flat-rw` (every signal writable through VPI: far
    fewer optimisations) and leaves Verilator's `OPT_FAST=-Os`; the lock-step wrapper's
    ports carry `/*verilator public_flat_rw*/` themselves, nothing else is accessed.
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
