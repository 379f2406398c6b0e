"""A device server that reports ready without listening, then crashes (launcher tests).

Run by the launcher as `python -m tests.crashing_server <server args>`: QEMU, started on
its ready file, fails to connect its debugcon chardev and exits first; the server dies
0.3 s later.  The launcher must name the server, the root cause, not QEMU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> int:
    ready = Path(sys.argv[sys.argv.index("--ready-file") + 1])
    ready.write_text("ready\n")
    time.sleep(0.3)
    print("crashing_server: simulated crash after ready", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
