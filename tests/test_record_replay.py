"""Record and replay (qbridge.record, qbridge.replay; docs/record-replay.md).

The format: what the recorder writes for each kind of event, DMA included, and what the
reader refuses (another version, a cut-off file, a missing one) in one line with exit 2.
Both transports record through the real server.  The recorded sign-off (the session's
one model-backend boot, `recorded_model_signoff`) replays green on the model, Icarus and
Verilator, and a `tb.teeth` mutant's replay stops at the first transaction the mutant
changes, which the test finds in the record by itself (the first read of a number).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qbridge.childenv import child_env
from qbridge.record import (
    FORMAT,
    VERSION,
    RecordEndpoint,
    RecordingHostPort,
    RecordWriter,
    completion_from,
    completion_json,
    read_record,
    request_from,
    request_json,
)
from qbridge.replay import Replay
from qbridge.vfio_user import protocol as p

from bench.fake_qemu import FakeQemu
from models.contract.layout import REPO
from models.contract.regmap import (
    BAR0_SIZE,
    COMMAND_MASTER,
    COMMAND_MEMORY,
    DMA_CTRL_IRQ_EN,
    DMA_CTRL_START,
    DMA_STATUS_DONE,
    MSI_CAP,
    MSI_CONTROL_ENABLE,
    RNG_NEXT_DWORDS,
    RNG_REGISTERS,
    rng_register_at,
)
from models.contract.transaction import COMPLETION_FIELDS, REQUEST_FIELDS, Host, Kind
from models.device import Device, NoHost
from tb.teeth import mutate
from tests.test_bridge_dma import (
    CONFIG,
    MSI_ADDR,
    MSI_DATA,
    RAM_GPA,
    RAM_SIZE,
    arm,
    expected_bytes,
    vfio_transfer,
    vfio_up,
)
from tests.vfio_user_fake_client import Client

BAR0 = FakeQemu.BAR0
READY_TIMEOUT_S = 60.0
REPLAY_TIMEOUT_S = 600.0  # a cold simulator build included; a warm replay takes seconds


def _replay(record: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qbridge.replay", str(record), *args],
                          cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=REPLAY_TIMEOUT_S)


def _reg(name: str) -> int:
    return next(r.offset for r in RNG_REGISTERS if r.name == name)


async def _record_a_session(path: Path) -> None:
    """A session on the model through the recorder: config, seed, reads of every size,
    a debugcon stream, a reset and a DMA transfer into a host with no memory."""
    writer = RecordWriter.open(path, {"transport": "none", "backend": "model", "sim": None})
    device = Device(console_sink=writer.console)
    device.host = RecordingHostPort(NoHost(), writer)
    host = Host(RecordEndpoint(device, writer))
    await host.cfg_write(0x10, BAR0)
    await host.cfg_write(0x04, COMMAND_MEMORY | COMMAND_MASTER, 2)
    await host.mem_write(BAR0 + _reg("SEED"), 7)
    await host.mem_read(BAR0 + _reg("RNG"))
    await host.mem_read(BAR0 + _reg("RNG64"), 8)
    await host.mem_read(BAR0 + _reg("ID") + 2, 2)
    await host.io_write_each(0xE9, b"hi\n")
    await host.mem_write(BAR0 + _reg("DMA_ADDR"), 0x1000, 8)
    await host.mem_write(BAR0 + _reg("DMA_LEN"), 8)
    await host.mem_write(BAR0 + _reg("DMA_CTRL"), DMA_CTRL_START)
    await host.endpoint.reset()
    await host.cfg_read(0x00)
    writer.close()


def test_the_recorder_writes_every_kind_of_event_with_the_contracts_field_names(
        tmp_path: Path) -> None:
    path = tmp_path / "rec"
    asyncio.run(_record_a_session(path))
    rec = read_record(path)
    assert (rec.header["format"], rec.header["version"]) == (FORMAT, VERSION)
    kinds = [e["t"] for e in rec.events]
    assert kinds.count("reset") == 1 and kinds.count("stream") == 1, kinds
    assert kinds.count("dma_write") == 2 and kinds.count("dma_read") == 1, kinds
    txs = [e for e in rec.events if e["t"] == "tx"]
    assert set(txs[0]["req"]) == set(REQUEST_FIELDS), txs[0]
    assert set(txs[0]["cpl"]) == set(COMPLETION_FIELDS), txs[0]
    for e in txs:  # the hot path's own formatting says what the JSON helpers say
        req = request_from(e["req"])
        assert e["req"] == request_json(req), e
        assert e["cpl"] == completion_json(completion_from(e["cpl"])), e
    assert any(e["cpl"] is None and e["req"]["kind"] == "MEM_WRITE" for e in txs)
    pair = [e for e in txs if "batch" in e]
    assert len(pair) == 2 and pair[0]["batch"] == pair[1]["batch"] == pair[0]["seq"], pair
    # seq: the device's order, a stream taking a position per byte
    seqs = [e["seq"] for e in rec.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    stream = next(e for e in rec.events if e["t"] == "stream")
    after = rec.events[rec.events.index(stream) + 1]
    assert after["seq"] == stream["seq"] + 3 and bytes.fromhex(stream["bytes"]) == b"hi\n"
    # DMA into no memory: writes dropped, the flush read completes UR (as NoHost answers)
    read = next(e for e in rec.events if e["t"] == "dma_read")
    assert read["req"]["kind"] == Kind.MEM_READ.name and read["cpl"]["status"] == "UR"
    assert rec.transactions == len(txs) + 3


def test_a_faithful_record_replays_green_and_a_changed_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rec"
    asyncio.run(_record_a_session(path))
    good = _replay(path)
    assert good.returncode == 0 and "replay: PASS on model" in good.stdout, \
        good.stdout + good.stderr
    assert "ERROR" not in good.stdout + good.stderr
    lines = path.read_text().splitlines()
    # The RNG64 pair's high DW and one DMA write, each changed in a copy of the record.
    for what, pick, name in (
            ("completion", lambda e: e.get("batch") is not None and e["req"]["addr"] % 8,
             "RNG64"),
            ("dma_write", lambda e: e["t"] == "dma_write", "")):
        idx = next(i for i, ln in enumerate(lines[1:-1], 1) if pick(json.loads(ln)))
        event = json.loads(lines[idx])
        if what == "completion":
            event["cpl"]["data"] ^= 1
        else:
            event["req"]["data"] ^= 1 << 8
        changed = tmp_path / f"{what}.rec"
        changed.write_text("\n".join([*lines[:idx], json.dumps(event), *lines[idx + 1:]])
                           + "\n")
        bad = _replay(changed)
        out = bad.stdout
        assert bad.returncode == 1, out + bad.stderr
        assert f"at transaction #{event['seq']} ({what})" in out, out
        if name:
            assert f"register BAR0 {name}" in out, out
            assert f"expected: CPL tag={event['cpl']['tag']} SC data={event['cpl']['data']:#010x}" \
                in out, out


@pytest.mark.parametrize("damage", ["version", "truncated", "no_end", "missing", "not_json"])
def test_bad_records_are_refused_in_one_line_with_exit_2(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "rec"
    asyncio.run(_record_a_session(path))
    text = path.read_text()
    if damage == "version":
        path.write_text(text.replace(f'"version":{VERSION}', f'"version":{VERSION - 1}', 1))
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "no_end":
        path.write_text("\n".join(ln for ln in text.splitlines()
                                  if '"t":"end"' not in ln) + "\n")
    elif damage == "missing":
        path.unlink()
    else:
        path.write_text("hello\n")
    run = _replay(path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stdout == "" and len(run.stderr.splitlines()) == 1, run.stderr
    assert "Traceback" not in run.stderr
    want = {"version": "version", "truncated": "truncated", "no_end": "truncated",
            "missing": "cannot read", "not_json": "not JSON"}[damage]
    assert want in run.stderr, run.stderr


def _server(tmp_path: Path, transport: str, conn: socket.socket | None,
            backend: str = "model") -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "qbridge.server", "--backend", backend,
           "--transport", transport, "--capture", str(tmp_path / "cap"),
           "--record", str(tmp_path / "rec"), "--ready-file", str(tmp_path / "ready"),
           "--log", str(tmp_path / "server.log")]
    if conn is not None:
        cmd += ["--transport-fd", str(conn.fileno())]
    else:
        cmd += ["--transport-listen", str(tmp_path / "dev.sock")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), text=True,
                            pass_fds=(conn.fileno(),) if conn is not None else ())
    deadline = time.monotonic() + (REPLAY_TIMEOUT_S if backend == "rtl" else READY_TIMEOUT_S)
    while not (tmp_path / "ready").exists():
        assert proc.poll() is None, f"the server exited {proc.returncode}"
        assert time.monotonic() < deadline, "the server did not get ready"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize(("transport", "backend"), [("proxy", "model"), ("vfio-user", "model"),
                                                   ("proxy", "rtl")])
def test_both_transports_and_backends_record_through_the_server_and_replay_green(
        tmp_path: Path, transport: str, backend: str, glibc) -> None:
    if transport == "proxy":
        if backend == "rtl":  # in its simulator: it listens, we connect
            proc = _server(tmp_path, transport, None, backend)
            ours = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            ours.connect(str(tmp_path / "dev.sock"))
        else:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            proc = _server(tmp_path, transport, theirs)
            theirs.close()
        q = FakeQemu(ours)
        q.reset()
        q.realize()
        q.enable()
        q.bar_write(BAR0 + 4, 3)
        got = [q.bar_read(BAR0) for _ in range(3)]
    else:
        proc = _server(tmp_path, transport, None)
        ours = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.connect(str(tmp_path / "dev.sock"))
        c = Client(ours)
        c.version()
        c.write(7, 0x10, BAR0, 4)
        c.write(7, 0x04, COMMAND_MEMORY, 2)
        c.write(0, 0x4, 3, 4, posted=True)
        got = [c.read_int(0, 0x0, 4) for _ in range(3)]
    ours.close()
    assert proc.wait(timeout=60) == 0
    assert got == glibc(3, 3)
    rec = read_record(tmp_path / "rec")
    assert rec.header["transport"] == transport and rec.header["backend"] == backend
    # the simulation time where there is one, rising with the requests
    stamps = [e.get("sim_ns") for e in rec.events]
    if backend == "rtl":
        assert None not in stamps and stamps == sorted(stamps) and stamps[-1] > 0, stamps
    else:
        assert set(stamps) == {None}, stamps
    reads = [e["cpl"]["data"] for e in rec.events if e["t"] == "tx"
             and e["req"]["kind"] == "MEM_READ" and e["req"]["addr"] == BAR0]
    assert reads == got, reads
    run = _replay(tmp_path / "rec")
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_guests_dma_and_msi_are_recorded_and_replayed(tmp_path: Path) -> None:
    # A transfer into guest RAM (a memfd, DMA_MAP) with an MSI, through the real server:
    # the device's writes, its flush read and the MSI are in the record as the host the
    # core gave the device saw them, and the replay checks them.
    ram = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(ram, RAM_SIZE)
    proc = _server(tmp_path, "vfio-user", None)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(tmp_path / "dev.sock"))
        c = vfio_up(sock, ram)
        c.write(CONFIG, MSI_CAP + 4, MSI_ADDR, 4)
        c.write(CONFIG, MSI_CAP + 12, MSI_DATA, 2)
        c.write(CONFIG, MSI_CAP + 2, MSI_CONTROL_ENABLE >> 16, 2)
        msi = arm(c, p.PCI_MSI_IRQ_INDEX)
        status = vfio_transfer(c, RAM_GPA, 64, DMA_CTRL_IRQ_EN)
        sock.close()
        assert proc.wait(timeout=30) == 0
        os.close(msi)
        written = os.pread(ram, 64, 0)
    finally:
        os.close(ram)
        if proc.poll() is None:
            proc.kill()
    assert status == DMA_STATUS_DONE and written == expected_bytes(3, 64), status
    rec = read_record(tmp_path / "rec")
    writes = [e["req"] for e in rec.events if e["t"] == "dma_write"]
    data = b"".join(w["data"].to_bytes(4, "little") for w in writes
                    if w["addr"] < RAM_GPA + 64)
    assert data == written, "the recorded DMA writes are not what landed in guest RAM"
    assert [w["addr"] for w in writes if w["addr"] >= RAM_GPA + 64] == [MSI_ADDR], writes
    assert [e["cpl"]["status"] for e in rec.events if e["t"] == "dma_read"] == ["SC"]
    good = _replay(tmp_path / "rec")
    assert good.returncode == 0, good.stdout + good.stderr
    # A device write that differs from the record is named at its own position.
    lines = (tmp_path / "rec").read_text().splitlines()
    idx = next(i for i, ln in enumerate(lines) if '"t":"dma_write"' in ln)
    event = json.loads(lines[idx])
    event["req"]["data"] ^= 1
    (tmp_path / "bad").write_text("\n".join([*lines[:idx], json.dumps(event),
                                             *lines[idx + 1:]]) + "\n")
    bad = _replay(tmp_path / "bad")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"at transaction #{event['seq']} (dma_write)" in bad.stdout, bad.stdout


# The recorded sign-off ---------------------------------------------------------------


def _signoff_record(recorded_model_signoff) -> Path:  # noqa: ANN001 (conftest's dataclass)
    res = recorded_model_signoff.res
    assert all(c.passed for c in recorded_model_signoff.checks), \
        "the recorded sign-off failed:\n" + "\n".join(res.serial_lines[-25:])
    return Path(recorded_model_signoff.record)


def test_the_recorded_signoff_holds_the_guests_traffic_and_markers(
        recorded_model_signoff) -> None:
    rec = read_record(_signoff_record(recorded_model_signoff))
    assert rec.header["backend"] == "model" and rec.header["transport"] == "proxy"
    assert any(text.startswith("STEP rng_ref PASS") for _, text in rec.markers)
    console = b"".join(bytes.fromhex(e["bytes"]) for e in rec.events if e["t"] == "console")
    assert console == recorded_model_signoff.res.capture.read_bytes(), console
    assert rec.transactions > 100, rec.transactions


@pytest.mark.parametrize(("backend", "sim"), [("model", "icarus"), ("rtl", "icarus"),
                                              ("rtl", "verilator")],
                         ids=["model", "rtl-icarus", "rtl-verilator"])
def test_the_recorded_signoff_replays_green(recorded_model_signoff, tmp_path: Path,
                                            backend: str, sim: str) -> None:
    record = _signoff_record(recorded_model_signoff)
    run = _replay(record, "--backend", backend, "--sim", sim, "--out", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    label = backend if backend == "model" else f"rtl-{sim}"
    want = f"replay: PASS on {label}: {read_record(record).transactions} transactions"
    assert want in run.stdout, run.stdout
    assert "ERROR" not in run.stdout + run.stderr


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_a_mutants_replay_stops_at_the_first_transaction_it_changes(
        recorded_model_signoff, tmp_path: Path, sim: str) -> None:
    # discard_count: the generator discards one number fewer after seeding, so every
    # number differs; the first it changes is the record's first read of a number.
    record = _signoff_record(recorded_model_signoff)
    first = next(e for e in read_record(record).events if e["t"] == "tx"
                 and e["req"]["kind"] == "MEM_READ"
                 and e["req"]["addr"] % BAR0_SIZE in RNG_NEXT_DWORDS)
    reg = rng_register_at(first["req"]["addr"] % BAR0_SIZE)
    assert reg is not None
    verilog = mutate("discard_count", tmp_path / "mutant")
    run = _replay(record, "--backend", "rtl", "--sim", sim, "--verilog", str(verilog),
                  "--out", str(tmp_path / "out"), "--waves", "1")
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"at transaction #{first['seq']} (completion)" in run.stdout, run.stdout
    assert f"register BAR0 {reg.name} " in run.stdout, run.stdout
    assert f"expected: CPL tag={first['cpl']['tag']} SC data={first['cpl']['data']:#010x}" \
        in run.stdout, run.stdout
    assert "guest: during step " in run.stdout, run.stdout
    waves = list((tmp_path / "out").glob("*.fst"))
    assert len(waves) == 1 and waves[0].stat().st_size > 0, waves
    assert "waves: look at " in run.stdout and str(waves[0]) in run.stdout, run.stdout
    # ... and the same replay on the unmutated RTL passes (the divergence is the mutant's)
    good = _replay(record, "--backend", "rtl", "--sim", sim, "--out", str(tmp_path))
    assert good.returncode == 0, good.stdout + good.stderr


def test_replay_in_process_on_the_model_matches_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "rec"
    asyncio.run(_record_a_session(path))
    replay = Replay(read_record(path))
    result = asyncio.run(replay.run(Device(console_sink=replay.console_sink,
                                           host=replay.host)))
    assert result.divergence is None, result.divergence
    assert result.transactions == read_record(path).transactions
    assert result.console_bytes == 3


def test_recorded_timing_waits_the_recorded_gaps(tmp_path: Path, monkeypatch) -> None:
    # The pacing itself, not the machine's speed: the waits the replay asks for follow the
    # record's wall-clock gaps (and none is longer than the cap).
    path = tmp_path / "rec"
    asyncio.run(_record_a_session(path))
    lines = path.read_text().splitlines()
    events = [json.loads(ln) for ln in lines[1:-1]]
    for i, e in enumerate(events):
        e["wall"] = 0.5 * i if i < 3 else 1000.0 + i  # then one gap beyond the cap
    path.write_text("\n".join([lines[0], *map(json.dumps, events), lines[-1]]) + "\n")
    waits: list[float] = []
    clock = [0.0]

    def sleep(s: float) -> None:
        waits.append(s)
        clock[0] += s

    import qbridge.replay as replay_mod

    monkeypatch.setattr(replay_mod.time, "sleep", sleep)
    monkeypatch.setattr(replay_mod.time, "monotonic", lambda: clock[0])
    replay = Replay(read_record(path), timing="recorded")
    result = asyncio.run(replay.run(Device(console_sink=replay.console_sink,
                                           host=replay.host)))
    assert result.divergence is None, result.divergence
    assert waits[:2] == [0.5, 0.5], waits
    assert waits[2] == replay_mod.MAX_WAIT_S, waits
    # the rest keeps its own gaps (1 s an event; a batch of two replays as one step)
    assert waits[3:] and set(waits[3:]) <= {1.0, 2.0}, waits
