"""Write the device as Verilog: `python -m rtl.generate DIR` -> DIR/cosim_top.v.

The file is rewritten only when its content changes, so simulator builds stay incremental.
The port list is checked against the one derived from the transaction interface.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from amaranth.back import verilog

from models.contract.transaction import COMPLETION_FIELDS, REQUEST_FIELDS
from rtl.top import Top

__all__ = ["MODULE", "PORTS", "generate", "verilog_text"]

log = logging.getLogger("cosim.rtl")

MODULE = "cosim_top"
# The Verilog ports, in order, as the testbench and the bridge expect them.
PORTS: tuple[str, ...] = (
    "clk", "rst",
    *(f"req__{n}" for n in ("valid", "ready", *REQUEST_FIELDS)),
    *(f"cpl__{n}" for n in ("valid", "ready", *COMPLETION_FIELDS)),
    "con__valid", "con__ready", "con__data",
    *(f"mreq__{n}" for n in ("valid", "ready", *REQUEST_FIELDS)),
    *(f"mcpl__{n}" for n in ("valid", "ready", *COMPLETION_FIELDS)),
    "intx", "active",
)


def verilog_text() -> str:
    """The Verilog of `Top` as module `cosim_top`; raises if its ports differ from PORTS."""
    text = verilog.convert(Top(), name=MODULE, emit_src=False)
    header = re.search(rf"^module {MODULE}\((.*?)\);", text, re.M | re.S)
    if header is None:
        raise RuntimeError(f"module {MODULE} not found in the generated Verilog")
    ports = tuple(p.strip() for p in header.group(1).split(","))
    if set(ports) != set(PORTS):
        raise RuntimeError(f"generated ports {ports} differ from the expected {PORTS}")
    return text


def generate(out_dir: Path) -> Path:
    """Write `out_dir/cosim_top.v` if its content changed; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{MODULE}.v"
    text = verilog_text()
    if path.exists() and path.read_text() == text:
        log.info("%s is up to date", path)
    else:
        # Several processes (regression, bridge, tests) may generate at once: write a
        # private file and rename it, so no reader ever sees a half-written one.
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        log.info("wrote %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write cosim_top.v into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    print(generate(args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
