"""Benchmark: the device's DMA into guest RAM through the device server, no VM.

    python -m bench.dma [--bytes N] [--runs N] [--backend LABEL ...] [--no-txlog]

One `python -m qbridge.server` per backend (model, RTL on Icarus, RTL on Verilator), as
the launcher starts it.  A fake QEMU (bench/fake_qemu.py, the tests' too; x-pci-proxy-dev)
hands over guest RAM as a memfd in SYNC_SYSMEM, as QEMU 7.2 does with the launcher's shared
memory backend, enables Bus Master and seeds the generator; per sample it programs one
transfer of `--bytes` (default 1 MiB, the engine's longest) and times from the START
write to the reply of the DMA_STATUS read after it.  Both backends finish a transfer
before that reply (the model inside the START write, the lock-step RTL in the service
exchanges after it), so the time is the whole transfer: the device's numbers, one DW
memory write each, a flush read per 4 KiB page, into the mapped memfd.  At the end the
memfd must hold glibc's stream for that seed, every sample's bytes (models.glibc_oracle).

This is the device-to-RAM figure; `/dev/hwrng` through the driver in a VM adds the guest's
register accesses and copies (bench.run's guest figures).  `measure()` is what bench.run
calls.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

from bench.debugcon import BACKENDS, start_server
from bench.fake_qemu import BAR_READ, FakeQemu, bar_payload
from models.contract.regmap import (
    COMMAND_MASTER,
    COMMAND_MEMORY,
    DMA_CTRL_START,
    DMA_MAX_LEN,
    DMA_STATUS_DONE,
    RNG_REGISTERS,
)
from models.glibc_oracle import glibc_sequence

__all__ = ["FIGURE", "measure", "run_backend"]

log = logging.getLogger("cosim.bench.dma")

FIGURE = "DMA device -> guest RAM"
SEED = 1
RAM_GPA = 0x10_0000
REPLY_TIMEOUT_S = 600.0  # one transfer: a MiB on Icarus, one DW at a time, takes minutes
_REG = {r.name: r.offset for r in RNG_REGISTERS}


def run_backend(label: str, nbytes: int, runs: int, tmp: Path,
                txlog: bool = True) -> list[float]:
    """`runs` samples in MB/s (1 MB = 10^6 bytes) of one `nbytes` transfer each."""
    if not 0 < nbytes <= DMA_MAX_LEN or nbytes % 4:
        raise ValueError(f"--bytes must be a multiple of 4 in 4..{DMA_MAX_LEN}, not {nbytes}")
    proc = start_server(label, tmp, txlog=txlog)
    ram = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    try:
        os.ftruncate(ram, nbytes)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(tmp / "proxy.sock"))
        q = FakeQemu(sock)
        bar = FakeQemu.BAR0
        q.cfg_read(0, 2, timeout=60.0)  # up (the RTL's first access waits for the simulator)
        q.cfg_write(0x10, bar)
        q.cfg_write(0x04, COMMAND_MEMORY | COMMAND_MASTER, 2)
        q.sync_sysmem([(RAM_GPA, nbytes, 0)], [ram])
        q.bar_write(bar + _REG["SEED"], SEED)
        q.bar_write(bar + _REG["DMA_ADDR"], RAM_GPA)
        q.bar_write(bar + _REG["DMA_ADDR"] + 4, 0)
        q.bar_write(bar + _REG["DMA_LEN"], nbytes)
        numbers = iter(glibc_sequence(SEED, runs * nbytes // 4))
        samples = []
        for run in range(runs):
            t0 = time.perf_counter()
            q.bar_write(bar + _REG["DMA_CTRL"], DMA_CTRL_START)
            q.send(BAR_READ, bar_payload(bar + _REG["DMA_STATUS"], 0, 4, True))
            status = q.reply(REPLY_TIMEOUT_S)
            elapsed = time.perf_counter() - t0
            if status != DMA_STATUS_DONE:
                raise RuntimeError(f"{label}: transfer {run} ended with DMA_STATUS {status:#x}")
            want = b"".join(next(numbers).to_bytes(4, "little") for _ in range(nbytes // 4))
            if os.pread(ram, nbytes, 0) != want:
                raise RuntimeError(f"{label}: transfer {run}: guest RAM differs from glibc")
            samples.append(nbytes / elapsed / 1e6)
            log.info("%s: %d bytes in %.3f s: %.2f MB/s", label, nbytes, elapsed, samples[-1])
        sock.close()
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{label}: server exited {proc.returncode}: {err.strip()}")
        return samples
    finally:
        os.close(ram)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure(nbytes: int, runs: int, labels: tuple[str, ...] = tuple(BACKENDS),
            txlog: bool = True) -> dict[str, list[float]]:
    """MB/s samples per backend label (one server per backend, `runs` transfers each)."""
    out = {}
    for label in labels:
        with tempfile.TemporaryDirectory(prefix="qbridge-dma-") as tmp:
            out[label] = run_backend(label, nbytes, runs, Path(tmp), txlog)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dma", description=__doc__.splitlines()[0])
    p.add_argument("--bytes", type=int, default=DMA_MAX_LEN)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--backend", action="append", choices=sorted(BACKENDS))
    p.add_argument("--no-txlog", action="store_true", help="serve without a transaction log")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        results = measure(args.bytes, args.runs, tuple(args.backend or BACKENDS),
                          txlog=not args.no_txlog)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"bench.dma: {exc}")
        return 2
    for label, samples in results.items():
        print(f"{label:14} " + " ".join(f"{s:8.2f}" for s in samples) + " MB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
