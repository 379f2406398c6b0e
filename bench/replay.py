"""Replay speed against the live boot, for the same traffic (docs/record-replay.md).

    python -m bench.replay [--record FILE] [--runs N] [--out DIR]

Per backend (model, RTL on Icarus, RTL on Verilator): the sign-off boots once on that
backend with `--record` (the live run: its wall time from QEMU's start to its exit, and
the record's span from the first to the last device event), then `--runs` replays of that
record on the same backend through `python -m qbridge.replay`, as a user runs it: the
transactions per second of the replay loop (the record's requests over the loop's wall
time, no simulator start or build) and the command's whole wall time.  With --record no
boot: every backend replays that record, and only the record's span is known of the live
run.  Prints the figures and writes them as JSON; a benchmark, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from qbridge.childenv import child_env
from qbridge.record import read_record
from qbridge.replay import ReplayResult

from models.contract.layout import OUT, REPO

__all__ = ["BACKENDS", "FIGURE_RATE", "FIGURE_WALL", "LiveBoot", "main", "record_boot",
           "replay_samples"]

log = logging.getLogger("cosim.bench.replay")

# (label, --backend, --sim), as bench.run labels backends.
BACKENDS = (("model", "model", "icarus"), ("rtl-icarus", "rtl", "icarus"),
            ("rtl-verilator", "rtl", "verilator"))
FIGURE_RATE = "replay of the recorded sign-off [transactions/s]"
FIGURE_WALL = "sign-off traffic, live boot vs replay command [s]"
REPLAY_TIMEOUT_S = 900.0  # a cold Verilator build included


@dataclass(frozen=True)
class LiveBoot:
    record: Path
    transactions: int
    span_s: float  # the record's first to last device event
    boot_s: float | None  # QEMU start to exit of the boot that recorded it (None: unknown)


def record_boot(out: Path, backend: str = "model", sim: str = "icarus") -> LiveBoot:
    """Boot the sign-off once on `backend`, recorded; RuntimeError if it failed."""
    from qbridge.signoff import run_signoff

    record = out / f"signoff-{backend}-{sim}.rec"
    vm = out / f"vm-{backend}-{sim}"
    res, checks = run_signoff(backend, sim, False, vm, progress=False, record=record)
    if not (res.ok and all(c.passed for c in checks)):
        raise RuntimeError(f"the recorded sign-off failed: {res.reason} ({vm})")
    rec = read_record(record)
    boot = res.elapsed - res.qemu_started if res.qemu_started is not None else None
    return LiveBoot(record, rec.transactions, rec.span, boot)


def replay_samples(record: Path, backend: str, sim: str, runs: int,
                   work: Path) -> tuple[list[float], list[float]]:
    """`runs` replays: transactions/s of each replay loop, and each command's wall time.
    On the RTL one more replay goes first, unmeasured: it may include the simulator's
    build.  A replay that fails is logged and leaves no sample."""
    rates: list[float] = []
    walls: list[float] = []
    warmup = 1 if backend == "rtl" else 0
    for i in range(runs + warmup):
        result_file = work / f"{backend}-{sim}-{i}.json"
        t0 = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "qbridge.replay", str(record), "--backend", backend,
             "--sim", sim, "--json", str(result_file), "--out", str(work / f"{sim}-out")],
            cwd=REPO, env=child_env(), capture_output=True, text=True,
            timeout=REPLAY_TIMEOUT_S)
        wall = time.monotonic() - t0
        if run.returncode != 0 or not result_file.exists():
            log.error("replay on %s/%s failed: %s", backend, sim,
                      (run.stdout + run.stderr).strip().splitlines()[:3])
            continue
        result = ReplayResult.from_json(result_file.read_text())
        if i < warmup:
            continue
        rates.append(result.transactions / result.seconds if result.seconds > 0 else 0.0)
        walls.append(wall)
    return rates, walls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay",
                                description=__doc__.splitlines()[0])
    p.add_argument("--record", type=Path, default=None,
                   help="a record to replay (default: boot the sign-off once, recorded)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=OUT / "bench" / "replay")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    backends: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        for label, backend, sim in BACKENDS:
            if args.record is None:
                live = record_boot(out, backend, sim)
            else:
                rec = read_record(args.record)
                live = LiveBoot(args.record, rec.transactions, rec.span, None)
            rates, walls = replay_samples(live.record, backend, sim, args.runs, Path(tmp))
            backends[label] = {
                "record": str(live.record), "transactions": live.transactions,
                "record_span_s": round(live.span_s, 3), "live_boot_s": live.boot_s,
                "rates": rates, "walls": walls,
                "rate_median": statistics.median(rates) if rates else None,
                "wall_median": statistics.median(walls) if walls else None}
            boot = (f"live boot {live.boot_s:.2f} s" if live.boot_s is not None
                    else f"recorded over {live.span_s:.2f} s")
            if rates:
                print(f"{label:14} {live.transactions} transactions: replay "
                      f"{statistics.median(rates):.0f} transactions/s, command "
                      f"{statistics.median(walls):.2f} s; {boot} (n={len(rates)})")
            else:
                print(f"{label:14} no sample (every replay failed); {boot}")
    figures = {"runs": args.runs, "backends": backends}
    (out / "replay.json").write_text(json.dumps(figures, indent=1))
    print(f"written {out / 'replay.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
