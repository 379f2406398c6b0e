"""Load and no loss in a real guest (issue 6, item 4): one boot of Debian's kernel under
stock QEMU with the device server (qbridge.launch), whose script

1. writes `debugcon_bytes` of a known pattern (busybox `seq`, cut to size) to
   /dev/debugcon: the server's capture must hold exactly those bytes, in order;
2. seeds the RNG, then runs `procs` processes of `ioctls` RAND ioctls each in parallel
   (bench/guest/rng_stress.c): together they must get exactly the next procs*ioctls
   numbers of glibc's sequence (ctypes; none lost, none twice) and each process its
   numbers in sequence order;
3. loads and unloads my_rng `cycles` times: /proc/meminfo (SUnreclaim) and the slab
   caches' active bytes before and after, and dmesg must show no warning.

    python -m bench.robustness.vm_load [--backend rtl --sim verilator] [--bytes 1048576]
        [--procs 8 --ioctls 1000 --cycles 100] --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from qbridge import image
from qbridge.launch import LaunchConfig, RunResult, Timeouts, launch

from models.contract.layout import REPO as ROOT
from models.glibc_oracle import glibc_sequence

log = logging.getLogger("cosim.bench.load")

STRESS_SRC = ROOT / "bench" / "guest" / "rng_stress.c"
SEED = 4242
# Leak threshold for `cycles` load/unload cycles: a driver leaking one small object per
# cycle stays under it, so this catches page-sized leaks; the dmesg check catches the
# kernel's own complaints (e.g. "kobject ... not released", refcount warnings).
UNRECLAIM_SLACK_KB = 256
# The kernel's own markers (case matters: "not a bug" in a boot message is no BUG:).
BAD_DMESG = re.compile(r"WARNING:|BUG:|Oops|Call Trace|kmemleak|refcount_t:|"
                       r"list_del corruption|general protection|my_rng.*(error|fail)")


def pattern(size: int) -> bytes:
    """What `seq 1 N | head -c size` prints."""
    out = bytearray()
    i = 1
    while len(out) < size:
        out += b"%d\n" % i
        i += 1
    return bytes(out[:size])


def build_stress(out: Path) -> Path:
    """Compile the guest program statically (the initramfs has no C library)."""
    exe = out / "rng_stress"
    if exe.exists() and exe.stat().st_mtime >= STRESS_SRC.stat().st_mtime:
        return exe
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror",
                    f"-I{ROOT / 'linux-driver'}", "-o", str(exe), str(STRESS_SRC)],
                   check=True, timeout=120, capture_output=True, text=True)
    return exe


def script(debugcon_bytes: int, procs: int, ioctls: int, cycles: int) -> str:
    rng = image.guest_module("my_rng")
    count = debugcon_bytes // 2 + 10  # every line is at least 2 bytes: enough lines
    meminfo = "grep -E '^(MemFree|Slab|SUnreclaim):' /proc/meminfo | tr -s ' ' | tr '\\n' ' '"
    slab = "awk 'NR > 2 { s += $2 * $4 } END { print s }' /proc/slabinfo"
    return f"""\
insmod {image.guest_module("debugcon")} || exit 10
echo "LOAD-DEBUGCON-BEGIN"
seq 1 {count} | head -c {debugcon_bytes} > /dev/debugcon || exit 11
echo "LOAD-DEBUGCON-END"
insmod {rng} || exit 12
/usr/bin/rng_stress seed {SEED} || exit 13
k=0
while [ $k -lt {procs} ]; do
	/usr/bin/rng_stress P$k {ioctls} > /tmp/p$k &
	k=$((k + 1))
done
wait
cat /tmp/p* | sed 's/^/IOCTL /'
rmmod my_rng || exit 14
echo "MEM-BEFORE $({meminfo}) SLAB $({slab})"
i=0
while [ $i -lt {cycles} ]; do
	insmod {rng} || exit 15
	rmmod my_rng || exit 16
	i=$((i + 1))
done
echo "CYCLES $i"
echo "MEM-AFTER $({meminfo}) SLAB $({slab})"
dmesg | sed 's/^/DMESG /'
exit 0
"""



@dataclass
class LoadResult:
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    bytes_streamed: int = 0
    bytes_lost: int = 0
    ioctls: int = 0
    numbers_lost: int = 0  # of the procs*ioctls numbers glibc says were due
    cycles: int = 0
    unreclaim_delta_kb: int | None = None
    slab_delta_bytes: int | None = None
    seconds: float = 0.0
    out: str = ""


def _kb(line: str, name: str) -> int:
    m = re.search(rf"{name}: (\d+) kB", line)
    if m is None:
        raise ValueError(f"no {name} in {line!r}")
    return int(m.group(1))


def check(res: RunResult, debugcon_bytes: int, procs: int, ioctls: int,
          cycles: int) -> LoadResult:
    r = LoadResult(out=str(res.out), seconds=round(res.elapsed, 1))
    if not res.ok:
        r.problems.append(f"the boot failed ({res.failed}: {res.reason})")
    lines = res.serial_lines
    # 1. debugcon: the pattern, whole and in order, in the capture.
    want = pattern(debugcon_bytes)
    capture = res.capture.read_bytes() if res.capture.exists() else b""
    if want in capture:
        r.bytes_streamed = len(want)
    else:
        # How much arrived in order: the longest prefix of the pattern in the capture.
        lo, hi = 0, len(want)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if want[:mid] in capture else (lo, mid - 1)
        r.bytes_streamed, r.bytes_lost = lo, len(want) - lo
        r.problems.append(f"debugcon: only the first {lo} of {len(want)} bytes arrived "
                          f"in order (capture holds {len(capture)} bytes)")
    # 2. parallel ioctls: the union is the next numbers, each process in order.
    seen: dict[str, list[int]] = {}
    for line in lines:
        if line.startswith("IOCTL "):
            _, tag, i, value = line.split()
            if int(i) != len(seen.setdefault(tag, [])):
                r.problems.append(f"ioctl line out of order: {line!r}")
            seen[tag].append(int(value))
    r.ioctls = sum(len(v) for v in seen.values())
    expect = glibc_sequence(SEED, procs * ioctls)
    index = {v: i for i, v in enumerate(expect)}
    if len(index) != len(expect):
        r.problems.append("glibc's sequence repeats a number: cannot check ownership")
    got = sorted(v for vals in seen.values() for v in vals)
    r.numbers_lost = len(set(expect) - set(got))
    if r.ioctls != procs * ioctls or len(seen) != procs:
        r.problems.append(f"ioctls: {len(seen)} processes gave {r.ioctls} numbers, "
                          f"expected {procs} x {ioctls}")
    elif got != sorted(expect):
        missing = len(set(expect) - set(got))
        r.problems.append(f"ioctls: the numbers are not glibc's next {len(expect)} "
                          f"({missing} missing)")
    else:
        for tag, vals in seen.items():
            positions = [index[v] for v in vals]
            if positions != sorted(positions):
                r.problems.append(f"{tag} saw the sequence out of order")
    # 3. load/unload cycles: memory and dmesg.
    before = next((x for x in lines if x.startswith("MEM-BEFORE ")), None)
    after = next((x for x in lines if x.startswith("MEM-AFTER ")), None)
    done = next((x for x in lines if x.startswith("CYCLES ")), "CYCLES 0")
    r.cycles = int(done.split()[1])
    if r.cycles != cycles:
        r.problems.append(f"only {r.cycles} of {cycles} insmod/rmmod cycles")
    if before and after:
        r.unreclaim_delta_kb = _kb(after, "SUnreclaim") - _kb(before, "SUnreclaim")
        r.slab_delta_bytes = int(after.split("SLAB ")[1]) - int(before.split("SLAB ")[1])
        if r.unreclaim_delta_kb > UNRECLAIM_SLACK_KB:
            r.problems.append(f"SUnreclaim grew by {r.unreclaim_delta_kb} kB over "
                              f"{cycles} cycles")
    elif res.ok:
        r.problems.append("no memory figures in the serial log")
    bad = [x for x in lines if x.startswith("DMESG ") and BAD_DMESG.search(x)]
    if bad:
        r.problems.append(f"dmesg warnings: {bad[:5]}")
    r.ok = not r.problems
    return r


def run(out: Path, backend: str = "rtl", sim: str = "verilator", debugcon_bytes: int = 1 << 20,
        procs: int = 8, ioctls: int = 1000, cycles: int = 100,
        timeout: float = 3600.0) -> LoadResult:
    out.mkdir(parents=True, exist_ok=True)
    stress = build_stress(out)
    initrd = image.build_initramfs(script(debugcon_bytes, procs, ioctls, cycles),
                                   out / "load.cpio", extra_files={"/usr/bin/rng_stress": stress})
    t0 = time.monotonic()
    res = launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=out / "run",
                              backend=backend, sim=sim, timeouts=Timeouts(
                                  run=timeout, server_ready=600.0)))
    log.info("load boot took %.1f s", time.monotonic() - t0)
    return check(res, debugcon_bytes, procs, ioctls, cycles)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.robustness.vm_load",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("model", "rtl"), default="rtl")
    p.add_argument("--sim", choices=("icarus", "verilator"), default="verilator")
    p.add_argument("--bytes", type=int, default=1 << 20)
    p.add_argument("--procs", type=int, default=8)
    p.add_argument("--ioctls", type=int, default=1000)
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
    r = run(args.out, args.backend, args.sim, args.bytes, args.procs, args.ioctls,
            args.cycles, args.timeout)
    (args.out / "load.json").write_text(json.dumps(r.__dict__, indent=2) + "\n")
    for problem in r.problems:
        log.error("%s", problem)
    print(f"vm_load: {'PASS' if r.ok else 'FAIL'}: {r.bytes_streamed} debugcon bytes "
          f"({r.bytes_lost} lost), {r.ioctls} ioctls, {r.cycles} insmod/rmmod cycles "
          f"(SUnreclaim delta {r.unreclaim_delta_kb} kB) in {r.seconds} s")
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
