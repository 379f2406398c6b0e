"""Replay a record (qbridge.record) against a backend, without QEMU, checking everything.

    python -m qbridge.replay RECORD [--backend model|rtl] [--sim icarus|verilator]
        [--timing asap|recorded] [--waves 0|1] [--verilog FILE] [--out DIR]

Drives the recorded requests, batches, debugcon streams and resets into the same backend
objects the device server uses (`models.device.Device`, or the RTL through
`qbridge.rtl.lockstep_endpoint` inside a simulator: `replay_on_rtl` builds the RTL
exactly as the server's RTL backend does -- the same incremental build folders, so a
replay after a `make vm BACKEND=rtl` builds nothing -- and runs `qbridge.rtl.replay_sim`) and
compares every completion, every DMA request and interrupt of the device, and the console
stream with the record.  `--timing recorded` waits between events as long as the
recorded run did (wall clock); `asap` (the default) does not wait.

Exit status: 0 when everything matched; 1 at the first divergence, printed with its
transaction index, register name, the expected and seen values and what the guest was
doing (the record's serial markers); 2 for bad input (missing file, another format
version, a truncated record).  With `--waves 1` (RTL) the replay runs on for
`WAVE_WINDOW` events past the divergence and keeps the FST with the simulation-time window
to look at.  `--verilog FILE` replays on another RTL (a mutant): it is built in
`<its folder>/replay-build`, never in the shared build, whose incremental rebuild goes by
file times and would take a mutant for the real RTL, or the other way round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.contract.layout import BUILD, OUT, bridge_sim_root, rtl_dir
from models.contract.regmap import (
    BAR0_SIZE,
    CONFIG_DWORDS,
    DEBUGCON_PORT,
    rng_register_at,
)
from models.contract.transaction import (
    Completion,
    Kind,
    Request,
    Status,
    io_write_stream,
    stream_requests,
    transact_all,
)
from qbridge.record import (
    Record,
    RecordError,
    completion_from,
    completion_json,
    read_record,
    request_from,
    request_json,
    requests_in,
)

__all__ = [
    "WAVE_WINDOW",
    "Divergence",
    "Replay",
    "ReplayResult",
    "format_report",
    "main",
    "register_name",
    "replay_on_rtl",
]

log = logging.getLogger("cosim.bridge.replay")

# The RTL replay runs as this cocotb module inside the simulator; its job in REPLAY_ENV.
RTL_MODULE = "qbridge.rtl.replay_sim"
REPLAY_ENV = "QBRIDGE_REPLAY"
WAVE_WINDOW = 16  # events replayed past a divergence with --waves, and shown before it
MAX_WAIT_S = 10.0  # --timing recorded: no single gap is reproduced longer than this
TIMINGS = ("asap", "recorded")


def register_name(kind: Kind, addr: int) -> str:
    """The register a request addresses, by the register map's names (regmap.py)."""
    if kind in (Kind.CFG_READ, Kind.CFG_WRITE):
        dword = CONFIG_DWORDS.get(addr & ~3)
        return f"config {dword.name if dword else 'unused'} (+{addr:#x})"
    if kind in (Kind.IO_READ, Kind.IO_WRITE):
        return "debugcon port" if addr == DEBUGCON_PORT & ~3 else f"I/O port {addr:#x}"
    # BAR0 is naturally aligned: the offset is the address modulo its size.
    offset = addr % BAR0_SIZE
    reg = rng_register_at(offset)
    return f"BAR0 {reg.name if reg else 'unused'} (+{offset:#x})"


@dataclass
class Divergence:
    """The first event whose outcome differs from the record."""

    seq: int  # the event's position in the record (a stream byte's own position)
    what: str  # what differed: completion, console, dma_write, dma_read, irq, error
    request: str  # the request (or device event), as str(Request) prints it
    register: str
    expected: str
    seen: str
    wall: float  # when the recorded run saw it (seconds from the record's start)
    sim_ns: int | None  # the recorded simulation time, on a simulated backend
    guest: str = ""  # what the guest was doing (the record's serial markers)


@dataclass
class ReplayResult:
    events: int  # device events replayed
    transactions: int  # requests replayed (a stream byte is one)
    seconds: float  # the replay loop's wall time (no simulator start or build)
    console_bytes: int
    divergence: Divergence | None = None
    wave_window_ns: tuple[int, int] | None = None  # --waves: the simulation time to look at

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ReplayResult:
        raw = json.loads(text)
        div = raw.pop("divergence")
        window = raw.pop("wave_window_ns")
        return cls(**raw, divergence=Divergence(**div) if div else None,
                   wave_window_ns=tuple(window) if window else None)  # type: ignore[arg-type]


def _cpl_text(raw: dict[str, Any] | None) -> str:
    cpl = completion_from(raw)
    return "posted (no completion)" if cpl is None else str(cpl)


class _ExpectHost:
    """The host side of a replay (a `HostPort`): the device's memory writes and its
    interrupt are compared with the record's, its reads answered from it.  It never
    raises (a HostPort must not); the first mismatch is kept for the replay loop."""

    def __init__(self, replay: Replay, events: Sequence[dict[str, Any]]) -> None:
        self._replay = replay
        self.expected = deque(e for e in events if e["t"] in ("dma_write", "dma_read", "irq"))

    def _next(self, what: str, seen: str) -> dict[str, Any] | None:
        exp = self.expected.popleft() if self.expected else None
        if exp is None or exp["t"] != what:
            self._replay.diverge(exp or self._replay.current, what, seen,
                                 "device's own request",
                                 "nothing" if exp is None else exp["t"], seen)
            return None
        return exp

    def memory_write(self, req: Request) -> None:
        exp = self._next("dma_write", str(req))
        if exp is not None and exp["req"] != request_json(req):
            self._replay.diverge(exp, "dma_write", str(req), "device's own request",
                                 str(request_from(exp["req"])),
                                 str(req))

    def memory_read(self, req: Request) -> Completion:
        exp = self._next("dma_read", str(req))
        if exp is None or exp["req"] != request_json(req):
            if exp is not None:
                self._replay.diverge(exp, "dma_read", str(req), "device's own request",
                                     str(request_from(exp["req"])),
                                     str(req))
            return Completion(req.tag, Status.UR, 0)
        cpl = completion_from(exp["cpl"])
        assert cpl is not None
        return cpl

    def intx(self, asserted: bool) -> None:
        exp = self._next("irq", f"INTx {'asserted' if asserted else 'deasserted'}")
        if exp is not None and exp["asserted"] != asserted:
            self._replay.diverge(exp, "irq", "INTx", "interrupt", f"asserted={exp['asserted']}",
                                 f"asserted={asserted}")


class Replay:
    """One replay of `record`.  Give the backend `console_sink` (and `host` where it takes
    a HostPort), then `await run(endpoint)`."""

    def __init__(self, record: Record, timing: str = "asap", waves: bool = False) -> None:
        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {', '.join(TIMINGS)}, not {timing!r}")
        self.record = record
        self.timing = timing
        self.waves = waves
        self.expected_console = b"".join(bytes.fromhex(e["bytes"]) for e in record.events
                                         if e["t"] == "console")
        self.console = bytearray()
        self.host = _ExpectHost(self, record.events)
        self.divergence: Divergence | None = None
        self.current: dict[str, Any] = {"seq": 0, "wall": 0.0}  # the event being replayed

    def console_sink(self, data: bytes) -> None:
        self.console += data

    def diverge(self, event: dict[str, Any], what: str, request: str, register: str,
                expected: str, seen: str, offset: int = 0) -> None:
        """Keep the first divergence (later ones are consequences)."""
        if self.divergence is None:
            self.divergence = Divergence(
                event["seq"] + offset, what, request, register, expected, seen,
                float(event.get("wall", 0.0)), event.get("sim_ns"),
                guest_action(self.record, float(event.get("wall", 0.0))))

    def _check_console(self, event: dict[str, Any], final: bool = False) -> None:
        got, want = bytes(self.console), self.expected_console
        if want.startswith(got) and (not final or got == want):
            return
        at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                  min(len(got), len(want)))
        self.diverge(event, "console", f"console byte #{at}", "debugcon output",
                     repr(want[at:at + 16]) if at < len(want) else "end of the stream",
                     repr(got[at:at + 16]) if at < len(got) else "end of the stream")

    async def run(self, endpoint: Any, now: Callable[[], str] | None = None) -> ReplayResult:
        """Drive every event into `endpoint` in order, stop at the first divergence (with
        `waves`: WAVE_WINDOW events later); `now` (RTL) gives the simulation time."""
        events = self.record.events
        t0 = time.monotonic()
        wall0 = float(events[0]["wall"]) if events else 0.0
        times: list[int] = []  # the replay's simulation time after each event (waves)
        stop_at: int | None = None
        skipped = 0.0  # recorded idle time beyond MAX_WAIT_S gaps, not reproduced
        i = 0
        done = 0
        while i < len(events):
            event = events[i]
            self.current = event
            if self.timing == "recorded":
                wait = (float(event["wall"]) - wall0 - skipped) - (time.monotonic() - t0)
                if wait > MAX_WAIT_S:
                    skipped += wait - MAX_WAIT_S
                    wait = MAX_WAIT_S
                if wait > 0:
                    time.sleep(wait)
            step = await self._event(endpoint, events, i)
            if self.divergence is None:
                self._check_console(event)
            i += step
            done += step
            if now is not None:
                times.append(int(now().removesuffix("ns")))
            if self.divergence is not None:
                if not self.waves:
                    break
                stop_at = i + WAVE_WINDOW if stop_at is None else stop_at
                if i >= stop_at:
                    break
        if self.divergence is None:
            await endpoint.drain_console()
            end = {"seq": self.record.end.get("seq", self.current["seq"]),
                   "wall": events[-1]["wall"] if events else 0.0}
            self._check_console(end, final=True)
            for leftover in self.host.expected:
                self.diverge(leftover, leftover["t"], leftover["t"], "device's own request",
                             json.dumps(leftover.get("req", leftover.get("asserted"))),
                             "never happened")
        result = ReplayResult(done, requests_in(events[:i]), time.monotonic() - t0,
                              len(self.console), self.divergence)
        if self.waves and times and self.divergence is not None:
            first = max(0, len(times) - 2 * WAVE_WINDOW - 1)
            result.wave_window_ns = (times[first], times[-1])
        return result

    async def _event(self, endpoint: Any, events: Sequence[dict[str, Any]], i: int) -> int:
        """Replay `events[i]` (and the rest of its batch); the number of events taken."""
        event = events[i]
        kind = event["t"]
        if kind == "tx":
            batch = [event]
            if "batch" in event:
                while (i + len(batch) < len(events)
                       and events[i + len(batch)].get("batch") == event["batch"]):
                    batch.append(events[i + len(batch)])
            reqs = [request_from(e["req"]) for e in batch]
            try:
                cpls = (await transact_all(endpoint, reqs) if len(reqs) > 1
                        else [await endpoint.transact(reqs[0])])
            except Exception as exc:  # the backend refused: a divergence too
                self.diverge(event, "error", str(reqs[0]), register_name(reqs[0].kind,
                             reqs[0].addr), _cpl_text(event["cpl"]),
                             f"{type(exc).__name__}: {exc}")
                return len(batch)
            for e, req, cpl in zip(batch, reqs, cpls, strict=True):
                if completion_json(cpl) != e["cpl"]:
                    self.diverge(e, "completion", str(req), register_name(req.kind, req.addr),
                                 _cpl_text(e["cpl"]),
                                 "posted (no completion)" if cpl is None else str(cpl))
                    break
            return len(batch)
        if kind == "stream":
            await self._stream(endpoint, event)
        elif kind == "reset":
            await endpoint.drain_console()  # as qbridge.core.DeviceCore.reset
            await endpoint.reset()
        # console, dma_*, irq: checked as the backend produces them
        return 1

    async def _stream(self, endpoint: Any, event: dict[str, Any]) -> None:
        data = bytes.fromhex(event["bytes"])
        port, tag = event["port"], event["tag"]
        try:
            cpls = await io_write_stream(endpoint, port, data, tag)
        except Exception as exc:
            req = stream_requests(port, data[:1], tag)[0]
            self.diverge(event, "error", f"stream of {len(data)} bytes from {req}",
                         register_name(req.kind, req.addr), "completions",
                         f"{type(exc).__name__}: {exc}")
            return
        uniform = event.get("cpl")
        for j in range(len(data)):
            if uniform is not None:
                want_status, want_data = uniform["status"], uniform["data"]
            else:
                want_status, want_data = event["cpls"][j]
            got = cpls.completion(j)
            if (got.status.name, got.data) != (want_status, want_data):
                req = stream_requests(port, data[j:j + 1], (tag + j) & 0xFF)[0]
                want = Completion(req.tag, Status[want_status], want_data)
                self.diverge(event, "completion", str(req), register_name(req.kind, req.addr),
                             str(want), str(got), offset=j)
                return


def guest_action(record: Record, wall: float) -> str:
    """What the guest was doing at `wall` by the serial lines around it: the sign-off
    step in progress (the next `STEP <name>` line to come) and the lines before and after."""
    before = [text for t, text in record.markers if t <= wall]
    after = [text for t, text in record.markers if t > wall]
    if not before and not after:
        return "unknown (the record has no serial markers)"
    step = next((text.split()[1] for text in after if text.startswith("STEP ")
                 and len(text.split()) > 1), None)
    parts = [f"during step {step}" if step else "after the last sign-off step"]
    if before:
        parts.append(f"last serial line before: {before[-1]!r}")
    if after:
        parts.append(f"next: {after[0]!r}")
    return "; ".join(parts)


def format_report(result: ReplayResult, label: str, record: Record) -> list[str]:
    """The replay's verdict, a few lines: PASS with speed, or the first divergence."""
    div = result.divergence
    if div is None:
        rate = result.transactions / result.seconds if result.seconds > 0 else float("inf")
        return [f"replay: PASS on {label}: {result.transactions} transactions "
                f"({result.events} events) in {result.seconds:.2f} s ({rate:.0f} "
                f"transactions/s; the recorded run took {record.span:.1f} s), "
                f"{result.console_bytes} console bytes identical"]
    sim = f", {div.sim_ns} ns simulated" if div.sim_ns is not None else ""
    lines = [f"replay: DIVERGED on {label} at transaction #{div.seq} ({div.what}) of "
             f"{record.transactions}: {div.request}"
             + (f", register {div.register}" if div.register else ""),
             f"  expected: {div.expected}",
             f"  seen:     {div.seen}",
             f"  guest: {div.guest}",
             f"  recorded {div.wall:.3f} s into the run{sim}"]
    if result.wave_window_ns is not None:
        lo, hi = result.wave_window_ns
        lines.append(f"  waves: look at {lo} ns .. {hi} ns")
    return lines


def replay_on_rtl(record: Path, sim: str, timing: str = "asap", waves: bool = False,
                  verilog: Path | None = None, out: Path | None = None,
                  ) -> tuple[ReplayResult, list[Path]]:
    """Build (incrementally) and replay `record` on `sim`; the result and the wave files
    kept in `out`.  RuntimeError when the simulation produced no result."""
    from qbridge.rtl import private_api
    from qbridge.rtl.simbuild import build, build_dir_for, generate_verilog, run

    os.environ.pop("PYTEST_CURRENT_TEST", None)  # the runner would sys.exit() under pytest
    private_api.check_versions()
    if verilog is None:
        sim_root = bridge_sim_root(sim, BUILD)
        verilog = generate_verilog(rtl_dir(BUILD))
    else:
        sim_root = bridge_sim_root(sim, verilog.resolve().parent / "replay-build")
        verilog = verilog.resolve()
    out = (out or OUT / f"replay-{sim}").resolve()
    build_dir = build_dir_for(sim_root, sim, waves, lockstep=True)
    runner = build(sim, verilog, build_dir, waves, lockstep=True)
    run_dir = sim_root / f"replay-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    result_file = run_dir / "replay.json"
    job = {"record": str(record.resolve()), "timing": timing, "waves": waves,
           "result": str(result_file)}
    run(runner, [RTL_MODULE], build_dir, run_dir, run_dir / "results.xml", waves=waves,
        lockstep=True, extra_env={REPLAY_ENV: json.dumps(job)})
    out.mkdir(parents=True, exist_ok=True)
    if not result_file.exists():
        kept = out / "sim.log"
        if (run_dir / "sim.log").exists():
            shutil.copyfile(run_dir / "sim.log", kept)
        raise RuntimeError(f"the {sim} simulation of the replay gave no result (see {kept})")
    result = ReplayResult.from_json(result_file.read_text())
    kept_waves: list[Path] = []
    if waves:
        # Verilator dumps into the run folder, Icarus into its build folder.
        for wave in [*run_dir.glob("*.fst"), *build_dir.glob("*.fst")]:
            dest = out / wave.name
            shutil.copy2(wave, dest)
            kept_waves.append(dest)
    shutil.rmtree(run_dir, ignore_errors=True)
    return result, kept_waves


async def _replay_model(replay: Replay) -> ReplayResult:
    from models.device import Device

    device = Device(console_sink=replay.console_sink, host=replay.host)
    return await replay.run(device)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qbridge.replay",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("record", type=Path, help="a record (make vm RECORD=FILE)")
    p.add_argument("--backend", choices=("model", "rtl"), default="model")
    p.add_argument("--sim", choices=("icarus", "verilator"), default="icarus")
    p.add_argument("--timing", choices=TIMINGS, default="asap",
                   help="asap: back to back (default); recorded: the recorded wall-clock gaps")
    p.add_argument("--waves", type=int, choices=(0, 1), default=0,
                   help="RTL: keep an FST reaching past the first divergence")
    p.add_argument("--verilog", type=Path, default=None, metavar="FILE",
                   help="RTL: replay on this cosim_top.v instead of rtl/ (e.g. a mutant)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="RTL: where the simulator's log and waves go (default "
                        "out/replay-<sim>)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="also write the result as JSON (bench/)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Our warnings and errors on stderr; the simulator runner's chatter nowhere (sim.log
    # is kept when a simulation gives no result).
    logging.getLogger().addHandler(logging.NullHandler())
    ours = logging.getLogger("cosim")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("replay: %(levelname)s: %(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.WARNING)
    try:
        record = read_record(args.record)
    except RecordError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    if args.verilog is not None and not args.verilog.is_file():
        print(f"replay: no Verilog at {args.verilog}", file=sys.stderr)
        return 2
    if args.backend == "model" and (args.verilog is not None or args.waves):
        print("replay: --verilog and --waves are for --backend rtl", file=sys.stderr)
        return 2
    label = args.backend if args.backend == "model" else f"rtl-{args.sim}"
    waves: list[Path] = []
    if args.backend == "model":
        result = asyncio.run(_replay_model(Replay(record, args.timing)))
    else:
        try:
            result, waves = replay_on_rtl(args.record, args.sim, args.timing, bool(args.waves),
                                          args.verilog, args.out)
        except OSError as exc:  # e.g. an output folder that cannot be written
            print(f"replay: {exc}", file=sys.stderr)
            return 2
        except RuntimeError as exc:
            print(f"replay: {exc}", file=sys.stderr)
            return 1
    if args.json is not None:
        args.json.write_text(result.to_json())
    for line in format_report(result, label, record):
        print(line)
    if waves:
        print("  waves: " + ", ".join(str(w) for w in waves))
    return 0 if result.divergence is None else 1


if __name__ == "__main__":
    sys.exit(main())
