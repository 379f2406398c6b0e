"""Record what a co-simulated run's device saw: a versioned JSON Lines file.

    writer = RecordWriter.open(path, meta)          # the header line
    endpoint = RecordEndpoint(endpoint, writer)     # every request, completion, reset
    host = RecordingHostPort(host, writer)          # the device's DMA and interrupts
    writer.console(data)                            # the device's console bytes
    writer.close()                                  # the end line

    record = read_record(path)                      # RecordError for anything else

The recorder wraps the backend where every transport's requests meet it
(`qbridge.session.serve_with`), so proxy and vfio-user, model and RTL are recorded alike.
Each line is one JSON object; the first is the header, `{"format": "cosim-record",
"version": VERSION, ...}`, the last written by the server is `{"t": "end", ...}`, after
which the launcher may append the guest's serial lines (`"t": "marker"`).  Every device
event has `seq`, its position in the order the device saw it (a stream of `n` bytes takes
`n` positions), `wall` (seconds since the header's `epoch`) and, on a simulated backend,
`sim_ns`.  Schema and rules: docs/record-replay.md.

A reader refuses a file of another format or version, or one cut off before its end line,
with one sentence (`RecordError`): a replay of half a run, or of a run read with the
wrong rules, would report divergences that are not there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from models.contract.transaction import (
    COMPLETION_FIELDS,
    MASTER_KINDS,
    REQUEST_FIELDS,
    Completion,
    HostPort,
    Kind,
    Request,
    Status,
    StreamCompletions,
    io_write_stream,
    transact_all,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "Record",
    "RecordEndpoint",
    "RecordError",
    "RecordWriter",
    "RecordingHostPort",
    "append_markers",
    "completion_from",
    "completion_json",
    "read_record",
    "request_from",
    "request_json",
    "requests_in",
]

log = logging.getLogger("cosim.bridge.record")

FORMAT = "cosim-record"
VERSION = 1
# The device events (each has `seq`); "marker" (a guest serial line) and "end" are not.
# DMA and interrupts are the device's own requests (MASTER_KINDS) and its INTx level.
DEVICE_EVENTS = ("tx", "stream", "reset", "console", "dma_write", "dma_read", "irq")
_DMA_EVENT = {Kind.MEM_WRITE: "dma_write", Kind.MEM_READ: "dma_read"}
if set(_DMA_EVENT) != set(MASTER_KINDS):
    raise ImportError(f"the record's DMA events do not cover MASTER_KINDS {MASTER_KINDS}")


# The hot path, a `tx` line per guest access, is formatted directly (`_tx_line`: ~3 us
# instead of json.dumps' 14 us per access) with the contract's field names, checked here;
# the tests check its lines parse as `request_json`/`completion_json` build them.
if (tuple(REQUEST_FIELDS), tuple(COMPLETION_FIELDS)) != (
        ("kind", "tag", "addr", "be", "data"), ("tag", "status", "data")):
    raise ImportError(f"_tx_line formats other fields: {REQUEST_FIELDS}, {COMPLETION_FIELDS}")
_KIND_NAMES = {k: k.name for k in Kind}
_STATUS_NAMES = {s: s.name for s in Status}


class RecordError(Exception):
    """A record that cannot be read as this version's: one sentence, for the user."""


def request_json(req: Request) -> dict[str, Any]:
    """A request's fields by the contract's names (`REQUEST_FIELDS`), the kind by name."""
    out: dict[str, Any] = {name: getattr(req, name) for name in REQUEST_FIELDS}
    out["kind"] = req.kind.name
    return out


def completion_json(cpl: Completion | None) -> dict[str, Any] | None:
    """A completion's fields (`COMPLETION_FIELDS`), the status by name; None if posted."""
    if cpl is None:
        return None
    out: dict[str, Any] = {name: getattr(cpl, name) for name in COMPLETION_FIELDS}
    out["status"] = cpl.status.name
    return out


def request_from(raw: dict[str, Any]) -> Request:
    return Request(Kind[raw["kind"]], raw["addr"], raw["be"], raw["data"], raw["tag"])


def completion_from(raw: dict[str, Any] | None) -> Completion | None:
    if raw is None:
        return None
    return Completion(raw["tag"], Status[raw["status"]], raw["data"])


def _sim_ns(stamp: str) -> int:
    """The RTL backend's time stamp ("<n>ns", as the txlog writes it) as an int."""
    return int(stamp.removesuffix("ns"))


class RecordWriter:
    """Writes one record: the header at `open`, a line per event, the end line at `close`.

    `now`, if set (`set_clock`), gives the simulation time of the event being written;
    `batch_stamps` the time of each request of the backend's last batch (the txlog's)."""

    def __init__(self, out: TextIO, meta: dict[str, Any]) -> None:
        self._out = out
        self.epoch = time.time()
        self.seq = 0
        self.events = 0
        self._now: Callable[[], str] | None = None
        self._batch_stamps: Callable[[], Sequence[str]] | None = None
        self._line({"format": FORMAT, "version": VERSION, "epoch": self.epoch, **meta})

    @classmethod
    def open(cls, path: Path, meta: dict[str, Any]) -> RecordWriter:
        return cls(open(path, "w"), meta)  # noqa: SIM115 (closed by close())

    def set_clock(self, now: Callable[[], str] | None,
                  batch_stamps: Callable[[], Sequence[str]] | None = None) -> None:
        self._now = now
        self._batch_stamps = batch_stamps

    def _line(self, obj: dict[str, Any]) -> None:
        self._out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def event(self, kind: str, n: int = 1, sim: str | None = None, **fields: Any) -> None:
        """One device event taking `n` positions of the order; `sim` its time stamp
        (default: `now()`, if there is a clock)."""
        obj: dict[str, Any] = {"t": kind, "seq": self.seq, **fields,
                               "wall": round(time.time() - self.epoch, 6)}
        if sim is None and self._now is not None:
            sim = self._now()
        if sim is not None:
            obj["sim_ns"] = _sim_ns(sim)
        self._line(obj)
        self.seq += n
        self.events += 1

    def transactions(self, reqs: Sequence[Request], cpls: Sequence[Completion | None]) -> None:
        """A batch handed over together (`transact_all`): a line each, marked with the
        batch's first position when there is more than one, so a replay hands them over
        together too (the RTL serves a pair of DW reads as one exchange)."""
        stamps: Sequence[str] = ()
        if self._batch_stamps is not None and len(reqs) > 1:
            stamps = self._batch_stamps()
        batch = f',"batch":{self.seq}' if len(reqs) > 1 else ""
        for i, (req, cpl) in enumerate(zip(reqs, cpls, strict=True)):
            sim = stamps[i] if len(stamps) == len(reqs) else None
            if sim is None and self._now is not None:
                sim = self._now()
            self._tx_line(req, cpl, batch, sim)

    def _tx_line(self, req: Request, cpl: Completion | None, batch: str,
                 sim: str | None) -> None:
        """A `tx` event, as `event("tx", req=request_json(req), cpl=completion_json(cpl))`
        writes it (with `batch`: its `,"batch":N` text), formatted directly."""
        done = ("null" if cpl is None else
                f'{{"tag":{cpl.tag},"status":"{_STATUS_NAMES[cpl.status]}","data":{cpl.data}}}')
        stamp = "" if sim is None else f',"sim_ns":{_sim_ns(sim)}'
        self._out.write(
            f'{{"t":"tx","seq":{self.seq},"req":{{"kind":"{_KIND_NAMES[req.kind]}",'
            f'"tag":{req.tag},"addr":{req.addr},"be":{req.be},"data":{req.data}}},'
            f'"cpl":{done}{batch},"wall":{time.time() - self.epoch:.6f}{stamp}}}\n')
        self.seq += 1
        self.events += 1

    def stream(self, port: int, data: bytes, tag: int, cpls: StreamCompletions) -> None:
        """A debugcon stream: its bytes and their completions in one line."""
        if not data:
            return
        stamps = self._batch_stamps() if self._batch_stamps is not None else ()
        sim = stamps[-1] if len(stamps) == len(data) else None
        if cpls.uniform is not None:
            status, value = cpls.uniform
            done: dict[str, Any] = {"cpl": {"status": Status(status).name, "data": value}}
        else:
            done = {"cpls": [[Status(cpls.status[i]).name, cpls.data[i]]
                             for i in range(len(cpls))]}
        self.event("stream", n=len(data), sim=sim, port=port, tag=tag, count=len(data),
                   bytes=data.hex(), **done)

    def console(self, data: bytes) -> None:
        """Console bytes the device put out (in the order the sink got them)."""
        if data:
            self.event("console", bytes=data.hex())

    def close(self) -> None:
        if self._out.closed:
            return
        self._line({"t": "end", "seq": self.seq, "events": self.events})
        self._out.close()


class RecordEndpoint:
    """An endpoint wrapper recording every request, its completion and every reset.

    Like `qbridge.core.TxLogEndpoint` it hands each call on unchanged, so the backend sees
    exactly what it would see without it."""

    def __init__(self, inner: Any, writer: RecordWriter) -> None:
        self.inner = inner
        self.writer = writer

    def __getattr__(self, name: str) -> Any:
        # Whatever else the backend offers (its counters) stays reachable through the
        # recorder.
        return getattr(self.inner, name)

    @property
    def host(self) -> HostPort:
        return self.inner.host  # type: ignore[no-any-return]

    @host.setter
    def host(self, host: HostPort) -> None:
        """The host the core gives the device (the guest): its requests and interrupt
        are recorded too, in the order the device issued them."""
        self.inner.host = RecordingHostPort(host, self.writer)

    async def transact(self, req: Request) -> Completion | None:
        cpl = await self.inner.transact(req)
        self.writer.transactions((req,), (cpl,))
        return cpl

    async def transact_all(self, reqs: Sequence[Request]) -> list[Completion | None]:
        cpls = await transact_all(self.inner, reqs)
        self.writer.transactions(reqs, cpls)
        return cpls

    async def io_write_stream(self, port: int, data: bytes, tag: int) -> StreamCompletions:
        cpls = await io_write_stream(self.inner, port, data, tag)
        self.writer.stream(port, data, tag, cpls)
        return cpls

    async def reset(self) -> None:
        await self.inner.reset()
        self.writer.event("reset")

    async def drain_console(self) -> None:
        await self.inner.drain_console()


class RecordingHostPort:
    """A `HostPort` wrapper recording the device's own requests and its interrupt: the
    hook for the bridge's host side (wrap the HostPort the backend is given)."""

    def __init__(self, inner: HostPort, writer: RecordWriter) -> None:
        self.inner = inner
        self.writer = writer

    def memory_write(self, req: Request) -> None:
        self.inner.memory_write(req)
        self.writer.event(_DMA_EVENT[Kind.MEM_WRITE], req=request_json(req))

    def memory_read(self, req: Request) -> Completion:
        cpl = self.inner.memory_read(req)
        self.writer.event(_DMA_EVENT[Kind.MEM_READ], req=request_json(req),
                          cpl=completion_json(cpl))
        return cpl

    def intx(self, asserted: bool) -> None:
        self.inner.intx(asserted)
        self.writer.event("irq", asserted=asserted)


@dataclass
class Record:
    """A record as read: its header, the device's events in order, the guest's serial
    lines (`markers`: (wall, text)), and the end line."""

    path: Path
    header: dict[str, Any]
    events: list[dict[str, Any]]
    markers: list[tuple[float, str]] = field(default_factory=list)
    end: dict[str, Any] = field(default_factory=dict)

    @property
    def transactions(self) -> int:
        """Requests in the record (each byte of a stream is one)."""
        return requests_in(self.events)

    @property
    def span(self) -> float:
        """Wall seconds from the first to the last device event (the live run's time)."""
        if not self.events:
            return 0.0
        return float(self.events[-1]["wall"] - self.events[0]["wall"])


def requests_in(events: Iterable[dict[str, Any]]) -> int:
    """The requests among `events` (a stream's bytes each one, DMA not counted)."""
    return sum(e["count"] if e["t"] == "stream" else 1 for e in events
               if e["t"] in ("tx", "stream"))


def read_record(path: Path) -> Record:
    """The record at `path`; RecordError (one sentence) when it is missing, of another
    format or version, malformed, or cut off before its end line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RecordError(f"cannot read the record {path}: {exc.strerror or exc}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        raise RecordError(f"{path}: truncated record (its last line {len(lines)} is cut off)")
    if not lines:
        raise RecordError(f"{path}: empty file, not a {FORMAT} record")
    objs = []
    for no, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise RecordError(f"{path}: line {no} is not JSON: not a {FORMAT} record, or "
                              "a damaged one") from None
        if not isinstance(obj, dict):
            raise RecordError(f"{path}: line {no} is not a JSON object")
        objs.append(obj)
    header = objs[0]
    if header.get("format") != FORMAT:
        raise RecordError(f"{path}: not a {FORMAT} record (its first line has format "
                          f"{header.get('format')!r})")
    if header.get("version") != VERSION:
        raise RecordError(f"{path}: {FORMAT} version {header.get('version')!r}, but this "
                          f"replay reads version {VERSION} only: record the run again")
    rec = Record(Path(path), header, [])
    for no, obj in enumerate(objs[1:], 2):
        kind = obj.get("t")
        if kind == "marker":
            rec.markers.append((float(obj["wall"]), str(obj["text"])))
        elif kind == "end":
            rec.end = obj
        elif kind in DEVICE_EVENTS and not rec.end:
            rec.events.append(obj)
        elif kind in DEVICE_EVENTS:
            raise RecordError(f"{path}: line {no}: a device event after the end line")
        else:
            raise RecordError(f"{path}: line {no}: unknown entry type {kind!r}")
    if not rec.end:
        raise RecordError(f"{path}: truncated record: no end line (the run was cut off "
                          f"after {len(rec.events)} events)")
    if rec.end.get("events") != len(rec.events):
        raise RecordError(f"{path}: the end line counts {rec.end.get('events')} events, the "
                          f"file holds {len(rec.events)}")
    return rec


def append_markers(path: Path, epoch_lines: Iterable[tuple[float, str]]) -> int:
    """Append the guest's serial lines, each with its arrival time (`time.time()`), as
    marker entries after the end line: what the guest was doing around each event.
    The number appended; nothing when `path` holds no record."""
    try:
        with open(path) as f:
            header = json.loads(f.readline())
    except (OSError, json.JSONDecodeError):
        return 0
    epoch = float(header.get("epoch", 0.0))
    lines = [json.dumps({"t": "marker", "wall": round(t - epoch, 6), "text": text},
                        separators=(",", ":")) + "\n" for t, text in epoch_lines]
    with open(path, "a") as f:
        f.writelines(lines)
    return len(lines)
