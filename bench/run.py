"""`make bench`: every co-simulation speed figure, side by side, in one invocation.

    python -m bench.run --out out/bench [--quick] [--skip-suite] [--runs N]

Figures (bench/README.md says what each means and what bounds it):
- guest `ioread32` round trip, timed in the guest kernel by linux-driver/mmio_bench.c over
  >= 10000 reads of offset 0 of BAR0, for QEMU's built-in `edu` device (the native floor,
  measured in the model-backend boots), the model backend, RTL on Icarus and RTL on
  Verilator, each pinned (QEMU and server on one CPU, the launcher's `--pin`) and not;
  one boot per variant and sample, the variants in round robin;
- guest user-space RNG numbers/s through the ioctl and bytes/s through /dev/hwrng
  (linux-driver/user/rng_bench.c), per backend and pinning;
- sign-off wall time from QEMU's start to its exit, per backend, bzImage vs PVH vmlinux;
  from the same boots, the interrupt latency per transport and backend: the server's time
  from handing an interrupt to QEMU to the guest's next access (the handler's);
- RTL cycles/s free-running and transactions/s serving, per simulator (bench.sim_speed);
- DMA throughput of the device into guest RAM through the device server per backend, with
  and without the transaction log, no VM (bench.dma);
- debugcon throughput of the device server per backend, a 64 KiB burst from its socket to
  the capture file, no VM (bench.debugcon), and in a VM: a guest's 64 KiB `cat` into
  /dev/debugcon against the same into the serial console (`guest_console_figures`);
- replay of a recorded sign-off per backend: transactions/s and the command's wall time,
  against the live boot's (bench.replay);
- regression farm throughput, jobs/minute at 1 and 2 workers and where the time goes
  (bench.regress);
- wall time of `make sim` (per simulator) and of the whole test command (`make test`).
Each figure is the median of `--runs` (>= 5 by default) samples with min and max; all
variants are measured in this one invocation so their ratios are meaningful on a noisy
machine, and every record notes os.getloadavg() before and after it.

Output in --out: results.json (one record per figure), results.md (a table), results.png.
Benchmarks, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Record", "main", "summarise", "write_chart", "write_json", "write_markdown"]

log = logging.getLogger("cosim.bench")

REPO = Path(__file__).resolve().parents[1]
EDU = (0x1234, 0x11E8)  # QEMU's built-in educational PCI device (hw/misc/edu.c)
# Backends as (label, launcher backend, simulator).
BACKENDS = (("model", "model", "icarus"), ("rtl-icarus", "rtl", "icarus"),
            ("rtl-verilator", "rtl", "verilator"))
_MMIO = re.compile(r"mmio_bench: ([0-9a-f]{4}):([0-9a-f]{4}) \S+ (reads|writes)=(\d+) ns=(\d+)")
# The transports (qbridge.config.TRANSPORTS) and the QEMU each runs on.
TRANSPORT_QEMU = {"proxy": "QEMU 7.2", "vfio-user": "QEMU 11.1"}
_IOCTL = re.compile(r"RNGBENCH ioctl n=(\d+) ns=(\d+)")
_HWRNG = re.compile(r"RNGBENCH hwrng bytes=(\d+) ns=(\d+)")
_CONBENCH = re.compile(r"CONBENCH (debugcon|ttyS0) bytes=(\d+) t0=([\d.]+) t1=([\d.]+)")
GUEST_CON_BYTES = 64 * 1024  # per write of the in-guest console figure
GUEST_CON_FIGURE = "guest console 64 KiB write"


@dataclass
class Record:
    """One figure: `samples` (one per run) summarised as median/min/max in `unit`."""

    figure: str
    variant: str
    unit: str
    samples: list[float]
    load_before: list[float]
    load_after: list[float]
    better: str = "lower"  # "lower" | "higher"
    note: str = ""
    skipped: bool = False
    median: float | None = None
    min: float | None = None
    max: float | None = None
    extra: dict[str, object] = field(default_factory=dict)


def summarise(rec: Record) -> Record:
    """Fill median/min/max from the samples (none for a skipped or failed figure)."""
    if rec.samples:
        rec.median = statistics.median(rec.samples)
        rec.min, rec.max = min(rec.samples), max(rec.samples)
    return rec


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Bench:
    """Collects records; `measure` wraps one figure with the machine load around it."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def add(self, rec: Record) -> Record:
        summarise(rec)
        self.records.append(rec)
        if rec.skipped or rec.median is None:
            log.info("%-34s %-22s %s", rec.figure, rec.variant, rec.note or "skipped")
        else:
            log.info("%-34s %-22s median %.4g %s (min %.4g, max %.4g, n=%d)", rec.figure,
                     rec.variant, rec.median, rec.unit, rec.min, rec.max, len(rec.samples))
        return rec


# ---------------------------------------------------------------------------------------
# Guest-side figures: one boot per backend and pinning, all samples inside it.


def _guest_script(runs: int, reads: int, ioctls: int, hwrng_bytes: int, edu: bool) -> str:
    from qbridge import image

    from models.contract.regmap import IDENTITY, RNG_REGISTERS

    ours = f"vendor={IDENTITY.vendor:#06x} device={IDENTITY.device:#06x}"
    mmio = image.guest_module("mmio_bench")
    targets = ([f"vendor={EDU[0]:#06x} device={EDU[1]:#06x}"] if edu else []) + [ours]
    # SEED writes: posted over vfio-user, a round trip over x-pci-proxy-dev.
    seed = next(r for r in RNG_REGISTERS if r.name == "SEED")
    targets.append(f"{ours} offset={seed.offset:#x} write=1")
    lines = ["# Benchmark boot, generated by bench.run: timings only, no checks.",
             "fails=0"]
    for params in targets:
        lines += [
            f"for i in $(seq {runs}); do",
            "\tdmesg -c > /dev/null",
            f"\tinsmod {mmio} {params} count={reads} || fails=$((fails + 1))",
            "\tdmesg | grep 'mmio_bench:'",
            "\trmmod mmio_bench",
            "done",
        ]
    lines += [
        f"insmod {image.guest_module('my_rng')} || fails=$((fails + 1))",
        # khwrngd must not compete for the device (same reason as the sign-off).
        "echo my_rng > /sys/class/misc/hw_random/rng_current",
        f"for i in $(seq {runs}); do",
        f"\t{image.guest_program('rng_bench')} {ioctls} {hwrng_bytes} || fails=$((fails + 1))",
        "done",
        "rmmod my_rng",
        "exit $fails",
    ]
    return "\n".join(lines) + "\n"


def guest_figures(bench: Bench, out: Path, runs: int, reads: int, ioctls: int,
                  hwrng_bytes: int, pin_cpu: int) -> None:
    from qbridge import image
    from qbridge.launch import DEFAULT_APPEND, LaunchConfig, Timeouts, launch

    from models.contract.regmap import IDENTITY

    kernel = image.vmlinux()
    ours = (IDENTITY.vendor, IDENTITY.device)
    variants = [(f"{transport} {label}", transport, backend, sim, pin)
                for transport in TRANSPORT_QEMU for label, backend, sim in BACKENDS
                for pin in (None, pin_cpu)]
    # One boot gives one sample of each figure; the model boots also time QEMU's edu.
    initrds = {edu: image.build_initramfs(_guest_script(1, reads, ioctls, hwrng_bytes, edu),
                                          out / "guest" / f"bench{'-edu' if edu else ''}.cpio")
               for edu in (False, True)}
    # (figure, variant) -> samples; variant -> why boots failed.
    samples: dict[tuple[str, str], list[float]] = {}
    failures: dict[str, list[str]] = {}
    load0 = _load()
    # Round robin, one boot per variant and round (as the sign-off group): a drift in the
    # machine's load then spreads over all variants instead of biasing a ratio between
    # two of them (pinned figures moved 2x within minutes here).
    for i in range(runs):
        for label, transport, backend, sim, pin in variants:
            pinned = "pinned" if pin is not None else "unpinned"
            variant = f"{label} {pinned}"
            edu = backend == "model"
            run_out = out / "guest" / f"{label.replace(' ', '-')}-{pinned}-{i}"
            cfg = LaunchConfig(
                kernel=kernel, initrd=initrds[edu], out=run_out, backend=backend, sim=sim,
                transport=transport, pin=pin, append=f"{DEFAULT_APPEND} rng_core.default_quality=0",
                timeouts=Timeouts(server_ready=300.0, run=1800.0),
                extra_qemu_args=("-device", "edu") if edu else (),
            )
            res = launch(cfg)
            if not res.ok:
                failures.setdefault(variant, []).append(
                    f"{run_out}: {res.failed}: {res.reason}")
            for line in res.serial_lines:
                if m := _MMIO.search(line):
                    device = (int(m.group(1), 16), int(m.group(2), 16))
                    name = variant if device == ours else \
                        f"{transport} edu ({TRANSPORT_QEMU[transport]}) {pinned}"
                    figure = "guest ioread32" if m.group(3) == "reads" else \
                        "guest iowrite32 SEED"
                    samples.setdefault((figure, name), []).append(
                        int(m.group(5)) / int(m.group(4)) / 1e3)
                elif m := _IOCTL.search(line):
                    samples.setdefault(("guest ioctl numbers/s", variant), []).append(
                        int(m.group(1)) / (int(m.group(2)) / 1e9))
                elif m := _HWRNG.search(line):
                    samples.setdefault(("guest /dev/hwrng", variant), []).append(
                        int(m.group(1)) / (int(m.group(2)) / 1e9) / 1e3)
    load1 = _load()
    for label, transport, backend, _, pin in variants:
        pinned = "pinned" if pin is not None else "unpinned"
        variant = f"{label} {pinned}"
        failed = failures.get(variant, [])
        note = f"{len(failed)} boots failed: {failed[0]}" if failed else ""

        figures = [
            ("guest ioread32", variant, "us/read", "lower", {"reads_per_sample": reads}),
            ("guest iowrite32 SEED", variant, "us/write", "lower",
             {"writes_per_sample": reads, "flushed_by": "one ioread32 after the writes"}),
            ("guest ioctl numbers/s", variant, "numbers/s", "higher",
             {"ioctls_per_sample": ioctls}),
            ("guest /dev/hwrng", variant, "KB/s", "higher", {"bytes_per_sample": hwrng_bytes}),
        ]
        if backend == "model":
            figures.insert(0, ("guest ioread32",
                               f"{transport} edu ({TRANSPORT_QEMU[transport]}) {pinned}",
                               "us/read", "lower", {"reads_per_sample": reads}))
        for figure, name, unit, better, extra in figures:
            bench.add(Record(figure, name, unit, samples.get((figure, name), []), load0,
                             load1, better=better, note=note, extra=extra))


def signoff_figures(bench: Bench, out: Path, runs: int) -> None:
    from qbridge import image
    from qbridge.signoff import run_signoff

    kernels = {"bzImage": image.bzimage(), "PVH vmlinux": image.vmlinux()}
    # The kernel comparison on the default transport; vfio-user with the PVH kernel the
    # sign-off uses.
    variants = [(f"proxy {label}", "proxy", backend, sim, kname, kernel)
                for label, backend, sim in BACKENDS for kname, kernel in kernels.items()]
    variants += [(f"vfio-user {label}", "vfio-user", backend, sim, "PVH vmlinux",
                  kernels["PVH vmlinux"]) for label, backend, sim in BACKENDS]
    samples: dict[str, list[float]] = {}
    failures: dict[str, list[str]] = {}
    irq_us: dict[str, list[float]] = {}  # per vfio-user variant: each boot's median
    load0 = _load()
    # Round robin (run i of every variant before run i+1 of any): a drift in the machine's
    # load then spreads over all variants instead of biasing the ones measured first.
    for i in range(runs):
        for label, transport, backend, sim, kname, kernel in variants:
            variant = f"{label} {kname}"
            run_out = out / "signoff" / f"{label.replace(' ', '-')}-{kname.split()[-1]}-{i}"
            res, checks = run_signoff(backend, sim, False, run_out, progress=False,
                                      kernel=kernel, transport=transport)
            if res.ok and all(c.passed for c in checks) and res.qemu_started is not None:
                samples.setdefault(variant, []).append(res.elapsed - res.qemu_started)
                found = _IRQ_LATENCY.search(res.server_log.read_text())
                if found:
                    irq_us.setdefault(label, []).append(float(found.group(2)))
            else:
                failures.setdefault(variant, []).append(f"{run_out}: {res.reason}")
    load1 = _load()
    # The server measures it (qbridge.guest_host): from handing an interrupt to QEMU to the
    # guest's next message, the handler's INT_STATUS read.  x-pci-proxy-dev delivers none.
    for label, _, _ in BACKENDS:
        for transport in ("proxy", "vfio-user"):
            variant = f"{transport} {label}"
            got = irq_us.get(variant, [])
            note = "" if got else ("x-pci-proxy-dev delivers no interrupt under TCG"
                                   if transport == "proxy" else "no interrupt measured")
            bench.add(Record("interrupt -> handler's first access", variant, "us", got,
                             load0, load1, note=note, skipped=not got and transport == "proxy",
                             extra={"per_sample": "one boot's median"}))
    for label, _, _, _, kname, _ in variants:
        variant = f"{label} {kname}"
        failed = failures.get(variant, [])
        note = f"{len(failed)} failed: {failed[0]}" if failed else ""
        bench.add(Record("sign-off wall (QEMU start->exit)", variant, "s",
                         samples.get(variant, []), load0, load1, note=note))


_IRQ_LATENCY = re.compile(r"interrupt to the guest's next access: n=(\d+) median ([\d.]+) us")


def replay_figures(bench: Bench, out: Path, runs: int) -> None:
    """Per backend: the sign-off booted once, recorded, and its record replayed on the
    same backend, against that boot's wall time (bench.replay)."""
    from bench import replay

    for label, backend, sim in replay.BACKENDS:
        load0 = _load()
        live = replay.record_boot(out / "replay", backend, sim)
        if live.boot_s is not None:
            bench.add(Record(replay.FIGURE_WALL, f"{label} live boot (QEMU start->exit)",
                             "s", [live.boot_s], load0, _load(),
                             extra={"transactions": live.transactions}))
        load0 = _load()
        rates, walls = replay.replay_samples(live.record, backend, sim, runs, out / "replay")
        note = "" if rates else "every replay failed"
        bench.add(Record(replay.FIGURE_RATE, label, "transactions/s", rates, load0, _load(),
                         better="higher", note=note,
                         extra={"transactions": live.transactions}))
        bench.add(Record(replay.FIGURE_WALL, f"{label} replay", "s", walls, load0, _load(),
                         note=note))


def sim_figures(bench: Bench, out: Path, runs: int, seconds: float, quick: bool) -> None:
    from bench import sim_speed

    per: dict[tuple[str, str], list[float]] = {}
    load0 = _load()
    for i in range(runs):
        result = out / "sim_speed" / f"run{i}.json"
        if sim_speed.main(["--out", str(result), "--seconds", str(seconds)]) != 0:
            log.error("sim_speed run %d failed", i)
            continue
        for sim, figs in json.loads(result.read_text())["simulators"].items():
            for key in ("free_running_cycles_per_s", "cfg_reads_per_s", "rng_reads_per_s",
                        "rng64_reads_per_s"):
                per.setdefault((sim, key), []).append(float(figs[key]))
    load1 = _load()
    names = {"free_running_cycles_per_s": ("RTL free-running (cocotb)", "cycles/s"),
             "cfg_reads_per_s": ("RTL transactions/s (config read)", "transactions/s"),
             "rng_reads_per_s": ("RTL transactions/s (RNG read)", "transactions/s"),
             "rng64_reads_per_s": ("RTL 8-byte RNG64 reads/s (two DW requests)", "reads/s")}
    for (sim, key), samples in sorted(per.items()):
        figure, unit = names[key]
        bench.add(Record(figure, sim, unit, samples, load0, load1, better="higher"))
    # The reference of the free-running target: the same Verilog in plain Verilator C++.
    from bench import verilator_ref

    load0 = _load()
    try:
        ref = verilator_ref.measure(2_000_000 if quick else 10_000_000, runs)
        note = ""
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        ref, note = [], f"harness failed: {exc}"
    rec = bench.add(Record("RTL free-running (plain Verilator C++)", "verilator", "cycles/s",
                           ref, load0, _load(), better="higher", note=note))
    cocotb = per.get(("verilator", "free_running_cycles_per_s"))
    if rec.median and cocotb:
        bench.add(Record("cocotb/plain Verilator free-running", "verilator", "%",
                         [100 * c / rec.median for c in cocotb], load0, _load(),
                         better="higher", note="target >= 25 %"))


def regress_figures(bench: Bench, out: Path) -> None:
    """The regression farm's jobs/minute at 1 and 2 workers and its time split
    (bench.regress; one run per worker count: each is minutes long)."""
    from bench import regress

    load0 = _load()
    rc = regress.main(["--out", str(out / "regress")])
    data = json.loads((out / "regress" / "regress.json").read_text()) if rc == 0 else {}
    for s in data.get("samples", []):
        variant = f"{s['workers']} workers, a job per {s['group']}"
        bench.add(Record(regress.FIGURE_RATE, variant, "jobs/min", [s["jobs_per_min"]], load0,
                         _load(), better="higher", extra={"jobs": s["jobs"],
                                                          "case_runs_per_min":
                                                          s["case_runs_per_min"]}))
        for part in ("cluster_start_s", "build_s", "job_process_s", "case_s", "report_s"):
            bench.add(Record(regress.FIGURE_SPLIT, f"{variant}: {part[:-2]}", "s", [s[part]],
                             load0, _load()))
    if not data:
        bench.add(Record(regress.FIGURE_RATE, "1 and 2 workers", "jobs/min", [], load0,
                         _load(), skipped=True, note="bench.regress failed"))


def server_figures(bench: Bench, runs: int, reads: int, pin_cpu: int) -> None:
    """The device server alone (bench.server_loop): its CPU per read, and the round trip
    with a fake QEMU on the same CPU, for the minimal Python loop (the floor) and ours."""
    from bench import server_loop

    load0 = _load()
    try:
        samples = server_loop.measure(reads, runs, pin_cpu)
        note = ""
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        samples, note = {v: [] for v in server_loop.VARIANTS}, f"failed: {exc}"
    load1 = _load()
    for variant, runs_ in samples.items():
        bench.add(Record("device server CPU per BAR read (no QEMU)", variant, "us/read",
                         [r["server_cpu_us"] for r in runs_], load0, load1, note=note,
                         extra={"reads_per_sample": reads,
                                "user_us": [round(r["server_user_us"], 2) for r in runs_],
                                "sys_us": [round(r["server_sys_us"], 2) for r in runs_]}))
        bench.add(Record("device server round trip (fake QEMU, same CPU)", variant, "us/read",
                         [r["client_wall_us"] for r in runs_], load0, load1, note=note,
                         extra={"reads_per_sample": reads}))


def debugcon_figures(bench: Bench, runs: int) -> None:
    """The device server's debugcon throughput per backend (bench.debugcon): 64 KiB bursts
    on the debugcon socket until the capture file holds them, one server per backend."""
    from bench import debugcon

    for label in debugcon.BACKENDS:
        load0 = _load()
        try:
            with tempfile.TemporaryDirectory(prefix="qbridge-debugcon-") as tmp:
                samples = debugcon.run_backend(label, debugcon.BURST, runs, Path(tmp))
            note = ""
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            samples, note = [], f"failed: {exc}"
        bench.add(Record(debugcon.FIGURE, label, "KB/s", samples, load0, _load(),
                         better="higher", note=note,
                         extra={"bytes_per_sample": debugcon.BURST,
                                "kb": "1000 bytes", "measured": "socket -> capture file"}))


# Bytes per DMA sample: the engine's longest transfer, and less on Icarus (a MiB there is
# about a minute per sample).
DMA_BYTES = {"model": 1 << 20, "rtl-icarus": 64 << 10, "rtl-verilator": 1 << 20}


def dma_figures(bench: Bench, runs: int) -> None:
    """The device's DMA into guest RAM through the server per backend (bench.dma): one
    transfer per sample, START write to the status read's reply, bytes checked."""
    from bench import dma

    for label, nbytes in DMA_BYTES.items():
        for txlog in (True, False):
            load0 = _load()
            try:
                with tempfile.TemporaryDirectory(prefix="qbridge-dma-") as tmp:
                    samples = dma.run_backend(label, nbytes, runs, Path(tmp), txlog=txlog)
                note = ""
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                samples, note = [], f"failed: {exc}"
            variant = label if txlog else f"{label}, no txlog"
            bench.add(Record(dma.FIGURE, variant, "MB/s", samples, load0, _load(),
                             better="higher", note=note,
                             extra={"bytes_per_sample": nbytes, "mb": "10^6 bytes",
                                    "txlog": txlog, "measured": "START write -> status reply"}))


def _console_script(writes: int, nbytes: int) -> str:
    """The in-guest console boot: `writes` times `cat` of `nbytes` into /dev/debugcon (the
    debugcon module: an outb of port 0xe9 per byte, one I/O write each for the device
    server) and into /dev/ttyS0 (the serial console, QEMU alone: the reference), each
    timed with /proc/uptime (10 ms steps: 64 KiB take 100-600 ms)."""
    from qbridge import image

    lines = ["# Benchmark boot, generated by bench.run: timings only, no checks.",
             "fails=0",
             f"insmod {image.guest_module('debugcon')} || fails=$((fails + 1))",
             # Printable lines: the serial console's copy lands in the serial log.
             f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {nbytes} > /tmp/blob",
             f"for i in $(seq {writes}); do"]
    for dev in ("debugcon", "ttyS0"):
        lines += ["	t0=$(cut -d' ' -f1 /proc/uptime)",
                  f"	cat /tmp/blob > /dev/{dev} || fails=$((fails + 1))",
                  "	t1=$(cut -d' ' -f1 /proc/uptime)",
                  f'	echo "CONBENCH {dev} bytes={nbytes} t0=$t0 t1=$t1"']
    lines += ["done", "rmmod debugcon", "exit $fails"]
    return "\n".join(lines) + "\n"


def guest_console_figures(bench: Bench, out: Path, runs: int, pin_cpu: int,
                          backends: Sequence[str] = ("model", "rtl-verilator", "rtl-icarus"),
                          writes: int = 3) -> None:
    """In a VM: a guest's debugcon writes through the device server per backend against
    the serial console of the same boot (bench/README.md item 8); `runs` boots per
    variant (round robin), `writes` samples of each device per boot."""
    from qbridge import image
    from qbridge.launch import LaunchConfig, Timeouts, launch

    kernel = image.vmlinux()
    initrd = image.build_initramfs(_console_script(writes, GUEST_CON_BYTES),
                                   out / "guest" / "console-bench.cpio")
    variants = [(label, backend, sim, pin) for label, backend, sim in BACKENDS
                if label in backends for pin in (None, pin_cpu)]
    samples: dict[tuple[str, str], list[float]] = {}
    failures: dict[str, list[str]] = {}
    load0 = _load()
    for i in range(runs):
        for label, backend, sim, pin in variants:
            variant = f"{label} {'pinned' if pin is not None else 'unpinned'}"
            run_out = out / "guest" / f"console-{variant.replace(' ', '-')}-{i}"
            cfg = LaunchConfig(kernel=kernel, initrd=initrd, out=run_out, backend=backend,
                               sim=sim, pin=pin,
                               timeouts=Timeouts(server_ready=300.0, run=1800.0))
            res = launch(cfg)
            if not res.ok:
                failures.setdefault(variant, []).append(f"{run_out}: {res.failed}: {res.reason}")
            for line in res.serial_lines:
                if m := _CONBENCH.search(line):
                    took = float(m.group(4)) - float(m.group(3))
                    if took > 0:  # a write within one 10 ms step has no figure
                        samples.setdefault((m.group(1), variant), []).append(
                            int(m.group(2)) / took / 1e3)
    load1 = _load()
    for label, _, _, pin in variants:
        variant = f"{label} {'pinned' if pin is not None else 'unpinned'}"
        failed = failures.get(variant, [])
        note = f"{len(failed)} boots failed: {failed[0]}" if failed else ""
        for dev in ("debugcon", "ttyS0"):
            bench.add(Record(f"{GUEST_CON_FIGURE} /dev/{dev}", variant, "KB/s",
                             samples.get((dev, variant), []), load0, load1, better="higher",
                             note=note, extra={"bytes_per_sample": GUEST_CON_BYTES,
                                               "writes_per_boot": writes, "kb": "1000 bytes",
                                               "timed_with": "/proc/uptime (10 ms)"}))


def _timed(cmd: Sequence[str], timeout: float, log_file: Path) -> float | None:
    t0 = time.monotonic()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            log.error("%s: timed out after %.0f s", " ".join(cmd), timeout)
            return None
    if rc != 0:
        log.error("%s: exit status %d (log %s)", " ".join(cmd), rc, log_file)
        return None
    return time.monotonic() - t0


def suite_figures(bench: Bench, out: Path, runs: int, skip_suite: bool) -> None:
    for sim in ("icarus", "verilator"):
        load0 = _load()
        samples = [t for i in range(runs) if (t := _timed(
            ["make", "sim", f"SIM={sim}"], 1200, out / "suite" / f"sim-{sim}-{i}.log"))]
        bench.add(Record("wall time", f"make sim SIM={sim}", "s", samples, load0, _load(),
                         note="" if len(samples) == runs else "a run failed (see suite/)"))
    if skip_suite:
        bench.add(Record("wall time", "make test", "s", [], _load(), _load(), skipped=True,
                         note="skipped (--skip-suite)"))
        return
    load0 = _load()
    samples = [t for i in range(runs) if (t := _timed(
        ["make", "test"], 1800, out / "suite" / f"test-{i}.log"))]
    bench.add(Record("wall time", "make test", "s", samples, load0, _load(),
                     note="" if len(samples) == runs else "a run failed (see suite/)"))


# ---------------------------------------------------------------------------------------
# Output


def write_json(records: Sequence[Record], path: Path, meta: dict[str, object]) -> None:
    path.write_text(json.dumps({"meta": meta, "records": [asdict(r) for r in records]},
                               indent=2) + "\n")


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def write_markdown(records: Sequence[Record], path: Path, meta: dict[str, object]) -> None:
    lines = [f"# Co-simulation benchmarks ({meta.get('date', '')})", "",
             f"Runs per figure: {meta.get('runs')}; CPUs: {meta.get('cpus')}; "
             f"load before/after: {meta.get('load_before')} / {meta.get('load_after')}.", "",
             "| figure | variant | median | min | max | unit | n | load before | note |",
             "|---|---|---:|---:|---:|---|---:|---|---|"]
    for r in records:
        lines.append(f"| {r.figure} | {r.variant} | {_fmt(r.median)} | {_fmt(r.min)} | "
                     f"{_fmt(r.max)} | {r.unit} | {len(r.samples)} | "
                     f"{' '.join(map(str, r.load_before))} | {r.note} |")
    path.write_text("\n".join(lines) + "\n")


def write_chart(records: Sequence[Record], path: Path) -> None:
    """One horizontal bar panel per figure (log scale), whiskers from min to max."""
    import matplotlib

    matplotlib.use("Agg")  # no display on the build machines
    import matplotlib.pyplot as plt

    figures: dict[str, list[Record]] = {}
    for r in records:
        if r.median is not None:
            figures.setdefault(r.figure, []).append(r)
    if not figures:
        figures = {"no data": []}
    fig, axes = plt.subplots(len(figures), 1, squeeze=False,
                             figsize=(9, 1.2 + sum(0.35 * max(len(v), 1) + 0.8
                                                   for v in figures.values())),
                             gridspec_kw={"height_ratios": [max(len(v), 1)
                                                            for v in figures.values()]})
    for ax, (name, recs) in zip(axes[:, 0], figures.items(), strict=True):
        med = [r.median or 0.0 for r in recs]
        lo = [(r.median or 0) - (r.min or 0) for r in recs]
        hi = [(r.max or 0) - (r.median or 0) for r in recs]
        ax.barh(range(len(recs)), med, xerr=[lo, hi], color="tab:blue", capsize=3)
        ax.set_yticks(range(len(recs)), [r.variant for r in recs], fontsize=8)
        ax.invert_yaxis()
        if recs:
            ax.set_xscale("log")
            unit = recs[0].unit
            ax.set_title(f"{name} [{unit}] ({recs[0].better} is better)", fontsize=9)
            for i, m in enumerate(med):
                ax.annotate(_fmt(m), (m, i), fontsize=7, va="center",
                            xytext=(3, 0), textcoords="offset points")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(records: Sequence[Record], out: Path, meta: dict[str, object]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(records, out / "results.json", meta)
    write_markdown(records, out / "results.md", meta)
    write_chart(records, out / "results.png")


# ---------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    p.add_argument("--quick", action="store_true",
                   help="development: 3 runs, fewer reads, no suite timings")
    p.add_argument("--runs", type=int, default=None, help="samples per figure (default 5)")
    p.add_argument("--skip-suite", action="store_true",
                   help="leave out the `make test` timing (recorded as skipped)")
    p.add_argument("--only", action="append",
                   choices=("server", "debugcon", "dma", "guest", "signoff", "sim",
                            "replay", "regress", "suite"),
                   default=None,
                   help="measure only these groups (default all)")
    p.add_argument("--pin", type=int, default=0, metavar="CPU",
                   help="CPU for the pinned variants")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    runs = args.runs or (3 if args.quick else 5)
    if runs < 1:
        p.error("--runs must be at least 1")
    reads = 2000 if args.quick else 10000
    ioctls = 500 if args.quick else 2000
    hwrng_bytes = 4096 if args.quick else 16384
    groups = set(args.only or ("server", "debugcon", "dma", "guest", "signoff", "sim",
                               "replay", "regress", "suite"))
    if args.quick:
        groups -= {"suite", "regress"}
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench()
    meta: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "runs": runs, "quick": args.quick, "cpus": os.cpu_count(),
        "load_before": _load(), "mmio_reads_per_sample": reads,
        "ioctls_per_sample": ioctls, "hwrng_bytes_per_sample": hwrng_bytes,
    }
    steps: list[tuple[str, Callable[[], None]]] = [
        ("server", lambda: server_figures(bench, runs, 5000 if args.quick else 20000,
                                          args.pin)),
        ("debugcon", lambda: debugcon_figures(bench, runs)),
        ("dma", lambda: dma_figures(bench, runs)),
        ("debugcon", lambda: guest_console_figures(bench, out, runs, args.pin)),
        ("sim", lambda: sim_figures(bench, out, runs, 0.5 if args.quick else 1.0, args.quick)),
        ("guest", lambda: guest_figures(bench, out, runs, reads, ioctls, hwrng_bytes,
                                        args.pin)),
        ("signoff", lambda: signoff_figures(bench, out, runs)),
        ("replay", lambda: replay_figures(bench, out, runs)),
        ("regress", lambda: regress_figures(bench, out)),
        ("suite", lambda: suite_figures(bench, out, 1, args.skip_suite)),
    ]
    t0 = time.monotonic()
    try:
        for name, step in steps:
            if name in groups:
                step()
                # Partial results survive a later failure or an interrupt.
                write_all(bench.records, out, meta)
    finally:
        meta["load_after"] = _load()
        meta["wall_s"] = round(time.monotonic() - t0, 1)
        write_all(bench.records, out, meta)
        print((out / "results.md").read_text())
        print(f"written {out}/results.json, results.md, results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
