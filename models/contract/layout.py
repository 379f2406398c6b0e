"""Where things live: the repository's folders and its build tree, owned here only.

Every module that names a folder of the checkout or of `build/` takes it from here, so a
move is one edit.  It sits on the ground floor (no imports from the project) because
every floor needs it: the register-map generator writes into `linux-driver/` and `docs/`,
the bridge builds simulators under `build/`, tests and benchmarks find both.

`build/` holds everything that can be rebuilt (never committed); `out/` holds the
artifacts of user-facing runs (make vm, bench, robustness).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BRIDGE",
    "BUILD",
    "DOCS",
    "DRIVER",
    "OUT",
    "PYTHON_ROOTS",
    "REPO",
    "bridge_sim_root",
    "guest_dir",
    "qemu_chroot_dir",
    "regress_dir",
    "regress_models_dir",
    "rtl_dir",
    "tb_sim_dir",
]

REPO = Path(__file__).resolve().parents[2]
BRIDGE = REPO / "qemu-bridge"  # holds the `qbridge` package (a hyphenated folder)
DRIVER = REPO / "linux-driver"
DOCS = REPO / "docs"
BUILD = REPO / "build"
OUT = REPO / "out"
# What a Python process (ours, a child, a simulator's embedded interpreter) needs on its
# import path to import models, rtl, tb, bench and qbridge from this checkout.
PYTHON_ROOTS = (REPO, BRIDGE)


def rtl_dir(build: Path = BUILD) -> Path:
    """The generated Verilog of the RTL top (`cosim_top.v`) and the lock-step wrapper."""
    return build / "rtl"


def bridge_sim_root(sim: str, build: Path = BUILD) -> Path:
    """The RTL backend's simulator builds and its run folders (`run-<pid>`) for `sim`."""
    return build / "bridge-sim" / sim


def tb_sim_dir(build: Path = BUILD) -> Path:
    """Builds and runs of the testbench under pytest (`tb/test_*.py`)."""
    return build / "pytest-sim"


def regress_dir(out: Path = OUT) -> Path:
    """The regression farm's report and its jobs' output folders (`make regress`)."""
    return out / "regress"


def regress_models_dir(build: Path = BUILD) -> Path:
    """The regression farm's compiled models, one per design variant and simulator, kept
    between runs (a cluster's workers must see it at the same path)."""
    return build / "regress-models"


def guest_dir(build: Path = BUILD) -> Path:
    """The guest image: kernel, modules, programs, initramfs (qbridge.image)."""
    return build / "guest"


def qemu_chroot_dir(build: Path = BUILD) -> Path:
    """The private Debian 13 userland with QEMU 11.1 (the vfio-user client)."""
    return build / "qemu-11"
