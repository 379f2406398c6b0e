"""A record's replay on the RTL: `qbridge.replay` inside the simulator, lock-step.

`qbridge.replay.replay_on_rtl()` builds the RTL and runs this module's one cocotb test,
`replay_record`, which drives the record into a `LockstepEndpoint` -- the object the
server serves QEMU from -- and writes the `ReplayResult` as JSON for the parent.  The
job crosses into the simulator as JSON in `REPLAY_ENV`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb

from qbridge.record import read_record
from qbridge.replay import REPLAY_ENV, Replay

__all__ = ["replay_record"]


@cocotb.test()
async def replay_record(dut: object) -> None:
    """Replay the record named in REPLAY_ENV on the RTL; the result to its JSON file."""
    from qbridge.rtl.lockstep_endpoint import LockstepEndpoint  # inside the simulator only

    job = json.loads(os.environ[REPLAY_ENV])
    replay = Replay(read_record(Path(job["record"])), job["timing"], job["waves"])
    endpoint = LockstepEndpoint(dut, console_sink=replay.console_sink)
    endpoint.host = replay.host  # the device's own requests, as the core gives it the guest
    await endpoint.start()
    result = await replay.run(endpoint, now=endpoint.now)
    Path(job["result"]).write_text(result.to_json())
