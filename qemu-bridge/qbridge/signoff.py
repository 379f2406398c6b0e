"""The VM sign-off: a real Debian kernel, our unchanged drivers and programs, our device.

`make vm TRANSPORT=proxy|vfio-user BACKEND=model|rtl SIM=icarus|verilator WAVES=0|1` runs

    python -m qbridge.signoff --transport T --backend B --sim S --waves W --out out/vm-...

It builds a guest image (qbridge.image) whose script, in the guest, checks enumeration,
loads both drivers, runs the reference program, reads /dev/hwrng (64 bytes, then 64 KiB,
and with `rngtest` 2.5 MiB through Debian's rngtest), prints the driver's DMA and
interrupt counters and its /proc/interrupts line, unbinds the device while a read is
transferring (and binds it again), writes to /dev/debugcon, runs the misuse program,
unloads both drivers and checks dmesg for splats and DMA fallbacks, printing
`STEP <name> PASS|FAIL` per step.  It boots
that under stock QEMU (7.2 over x-pci-proxy-dev, or 11.1 over vfio-user) with the chosen
backend (qbridge.launch) and interrupt (`irq`: MSI, or INTx through `pci=nomsi`), then
checks on the host, against oracles independent of the device:
- every guest step passed and the run itself was clean (no component failed);
- the reference program's numbers equal glibc's srand(0); rand() x5 -- through ctypes and
  through models.glibc_rand -- in both rounds;
- /dev/hwrng's bytes after it are `pack24` of the rest of that sequence (each number's
  low 24 bits, little-endian: docs/hwrng.md): the 64 bytes themselves, the 64 KiB block's
  and rngtest's input's SHA-256; rngtest passes >= 99 % of its FIPS 140-2 blocks;
- the driver took the path CAPS advertises: with DMA, interrupt-driven over vfio-user
  (MSI or INTx as asked, one interrupt per transfer, as /proc/interrupts counts too),
  polled over x-pci-proxy-dev (QEMU cannot deliver the interrupt under TCG: none handled);
- the debugcon capture holds exactly the bytes the guest wrote, in order.
A PASS/FAIL table is printed; the exit status is non-zero on any failure, and the serial
log, debugcon capture, transaction log and waves stay in --out.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from models.contract.regmap import (
    CAPS_DMA,
    CAPS_RNG64,
    COMMAND_MASTER,
    DEBUGCON_PORT,
    DMA_STATUS_BUSY,
    IDENTITY,
    RNG_CAPS_VALUE,
    RNG_REGISTERS,
    STEP_MARK,
    STEP_MARK_SIZE,
)
from models.contract.transaction import stream_lane
from models.glibc_oracle import glibc_sequence
from models.glibc_rand import GlibcRand
from qbridge import image
from qbridge.config import TRANSPORTS
from qbridge.launch import (
    DEFAULT_APPEND,
    Component,
    LaunchConfig,
    RunResult,
    Timeouts,
    launch,
    stop_on_sigterm,
)

__all__ = [
    "DEBUGCON_TEXT",
    "HWRNG_BLOCK_BYTES",
    "HWRNG_BYTES",
    "HWRNG_PATH_DMA_INTX",
    "HWRNG_PATH_DMA_MSI",
    "HWRNG_PATH_DMA_POLLING",
    "HWRNG_PATH_RNG",
    "HWRNG_PATH_RNG64",
    "IRQ_MODES",
    "NUMBERS",
    "RNGTEST_BYTES",
    "RNGTEST_MIN_PASS",
    "ROUNDS",
    "SEED",
    "STEPS",
    "Check",
    "evaluate",
    "glibc_sequence",
    "guest_script",
    "hwrng_stream",
    "main",
    "pack24",
    "run_signoff",
    "steps",
]

log = logging.getLogger("cosim.signoff")

# What rng_ref does (linux-driver/user/rng_ref.c): seed 0, five numbers, twice.
SEED = 0
ROUNDS = 2
NUMBERS = 5
# `echo "hello from Linux" > /dev/debugcon`: echo adds the newline, the driver sends all.
DEBUGCON_TEXT = b"hello from Linux\n"
# One read(2) of /dev/hwrng: the hw_random core asks the driver for at most
# RNG_BUFFER_SIZE = max(32, SMP_CACHE_BYTES) = 64 bytes on x86_64 per call
# (drivers/char/hw_random/core.c); 64 is not a multiple of 3, so the driver carries the
# rest of a number into the next call (my_rng.c), which the block after it checks.
HWRNG_BYTES = 64
# Then a block through dd bs=4096 (many calls, several DMA transfers of the driver).
HWRNG_BLOCK_BYTES = 16 * 4096
# rngtest's input (with `rngtest`): 640 x 4 KiB = 1048 FIPS 140-2 blocks of 2500 bytes;
# glibc's srand(0) stream in this mapping passes 99.6 % of them (docs/hwrng.md).
RNGTEST_BYTES = 640 * 4096
RNGTEST_MIN_PASS = 0.99
RNGTEST_MIN_BLOCKS = 1000
# The interrupt the guest is asked to use: "intx" boots with pci=nomsi, so the kernel's
# pci_alloc_irq_vectors() falls back from MSI to the INTx line (drivers/pci/msi/msi.c).
IRQ_MODES = ("msi", "intx")
_NOMSI = "pci=nomsi"

# The guest steps in order; each prints `STEP <name> PASS|FAIL` (rngtest only where asked).
STEPS = (
    "enumerate",
    "insmod_my_rng",
    "insmod_debugcon",
    "rng_ref",
    "hwrng",
    "hwrng_block",
    "rngtest",
    "dma_counters",
    "unbind_busy",
    "debugcon_write",
    "misuse",
    "rmmod_my_rng",
    "rmmod_debugcon",
    "dmesg_clean",
)

# What the script marks after its last step, and what the transaction log calls the time
# before the first marker (qbridge.core.TxLogEndpoint).
END_STEP = "end"
BOOT_STEP = "boot"


def steps(rngtest: bool) -> tuple[str, ...]:
    """The steps a script with or without the rngtest step runs, in order."""
    return STEPS if rngtest else tuple(s for s in STEPS if s != "rngtest")


_STEP = re.compile(r"STEP (\w+) (PASS|FAIL)\b")
_ROUND = re.compile(r"Round (\d+) number (\d+): (\d+)$")
_HWRNG = re.compile(r"HWRNG-HEX ([0-9a-f]*)$")
# sha256sum's line: the digest, then the file name.
_SHA = re.compile(r"(HWRNG-BLOCK|RNGTEST-INPUT) ([0-9a-f]{64}) +(\d+)\s*$")
_RNGTEST = re.compile(r"RNGTEST rngtest: FIPS 140-2 (successes|failures): (\d+)")
_COUNTERS = re.compile(r"DMA-COUNTERS transfers=(\d+) errors=(\d+) irqs=(\d+)")
_IRQ_LINE = re.compile(r"IRQ-LINE (.*)$")
_CMDLINE = re.compile(r"CMDLINE (.*)$")
# The driver's last "hwrng reads:" line (my_rng.c): the path its hwrng reads take.
_HWRNG_PATH = re.compile(r"HWRNG-PATH (.*?)\s*$")
HWRNG_PATH_RNG64 = "hwrng reads: 8 bytes per access (RNG64)"
HWRNG_PATH_RNG = "hwrng reads: 4 bytes per access (RNG)"
HWRNG_PATH_DMA_MSI = "hwrng reads: DMA, interrupt MSI"
HWRNG_PATH_DMA_INTX = "hwrng reads: DMA, interrupt INTx"
HWRNG_PATH_DMA_POLLING = "hwrng reads: DMA, polling (no interrupt arrived)"
# Where the driver's counters are (its dev_groups, on the PCI device it is bound to).
_SYSFS_DRV = "/sys/bus/pci/drivers/my_rng"
_SYSFS_DEV = f"{_SYSFS_DRV}/0000:*"
_DMA_STATUS = next(r.offset for r in RNG_REGISTERS if r.name == "DMA_STATUS")
# A read of /dev/hwrng that cannot end before the unbind (16 MiB; DMA through the bridge
# runs at well under 1 MB/s), and how long the transfers it starts may take to show.
_UNBIND_READ_BLOCKS = 4096
_UNBIND_WAIT_TENTHS = 300
# Kernel lines a clean run never logs: splats, and the driver's DMA fallbacks (my_rng.c).
_DMESG_BAD = ("BUG:|Oops|WARNING:|Call Trace|DMA transfer (failed|timed out)"
              "|DMA interrupt missing|DMA engine still busy|DMA still busy")


def pack24(numbers: Sequence[int]) -> bytes:
    """/dev/hwrng's bytes for these numbers: the low 24 bits of each, little-endian."""
    return b"".join((n & 0xFF_FFFF).to_bytes(3, "little") for n in numbers)


def hwrng_stream(nbytes: int, after: int = NUMBERS, seed: int = SEED) -> bytes:
    """The first `nbytes` of /dev/hwrng after `after` numbers of glibc's srand(seed),
    from the ctypes oracle."""
    return pack24(glibc_sequence(seed, after + -(-nbytes // 3))[after:])[:nbytes]


def guest_script(rngtest: bool = False) -> str:
    """The sign-off steps as a busybox sh script (run by the image's /init); `rngtest`:
    also rngtest on RNGTEST_BYTES of /dev/hwrng (the image must hold it: run_signoff)."""
    ident = IDENTITY
    text = DEBUGCON_TEXT.decode().rstrip("\n")
    rngtest_step = "step rngtest rngtest_step\n" if rngtest else ""
    return f"""\
# Sign-off steps, generated by qbridge.signoff.  Every step runs even if an earlier one
# failed, so one boot reports everything; the exit status is the number of failed steps.
fails=0
# Each step's name goes to the device's STEP_MARK config window first (16 bytes at
# {STEP_MARK:#x}, docs/transactions.md): the bridge's transaction log attributes every
# transaction after it to the step.  Through sysfs `config`, so it works before a driver
# binds and after one unbinds.
cfg=
for d in /sys/bus/pci/devices/*; do
	[ "$(cat $d/vendor)" = {ident.vendor:#06x} ] && [ "$(cat $d/device)" = {ident.device:#06x} ] &&
		cfg=$d/config && break
done
mark() {{
	[ -n "$cfg" ] && printf '%-{STEP_MARK_SIZE}.{STEP_MARK_SIZE}s' "$1" |
		dd of=$cfg bs={STEP_MARK_SIZE} seek={STEP_MARK // STEP_MARK_SIZE} count=1 conv=notrunc \\
		2>/dev/null
}}
step() {{
	name=$1; shift
	mark $name
	if "$@"; then echo "STEP $name PASS"; else echo "STEP $name FAIL"; fails=$((fails + 1)); fi
}}

# Enumeration: the kernel found our function by itself, identity as in models/contract/regmap.py.
enumerate() {{
	for d in /sys/bus/pci/devices/*; do
		[ "$(cat $d/vendor)" = {ident.vendor:#06x} ] || continue
		[ "$(cat $d/device)" = {ident.device:#06x} ] || continue
		echo "PCI $d class=$(cat $d/class) revision=$(cat $d/revision)"
		return 0
	done
	echo "no {ident.vendor:04x}:{ident.device:04x} in /sys/bus/pci/devices"
	return 1
}}

# /dev/hwrng through the kernel's hw_random core: our source must be the current one.
hwrng() {{
	cur=$(cat /sys/class/misc/hw_random/rng_current)
	[ "$cur" = my_rng ] || echo my_rng > /sys/class/misc/hw_random/rng_current || return 1
	dd if=/dev/hwrng of=/tmp/hwrng bs={HWRNG_BYTES} count=1 2>/dev/null || return 1
	n=$(wc -c < /tmp/hwrng)
	echo "HWRNG-HEX $(od -An -v -tx1 /tmp/hwrng | tr -d ' \\n')"
	echo "HWRNG-PATH $(dmesg | grep -o 'hwrng reads: .*' | tail -n 1)"
	echo "hwrng: $n bytes from $(cat /sys/class/misc/hw_random/rng_current)"
	[ "$n" -eq {HWRNG_BYTES} ]
}}

# A larger block, the stream continued: its digest (the serial console is slow for hex).
hwrng_block() {{
	dd if=/dev/hwrng of=/tmp/block bs=4096 count={HWRNG_BLOCK_BYTES // 4096} 2>/dev/null || return 1
	echo "HWRNG-BLOCK $(sha256sum /tmp/block | cut -d ' ' -f 1) $(wc -c < /tmp/block)"
}}

# Debian's rngtest (FIPS 140-2) on the stream continued; its verdict is the host's.
rngtest_step() {{
	dd if=/dev/hwrng of=/tmp/rngtest bs=4096 count={RNGTEST_BYTES // 4096} 2>/dev/null || return 1
	echo "RNGTEST-INPUT $(sha256sum /tmp/rngtest | cut -d ' ' -f 1) $(wc -c < /tmp/rngtest)"
	{image.guest_rngtest()} < /tmp/rngtest > /tmp/rngtest.out 2>&1
	sed 's/^/RNGTEST /' /tmp/rngtest.out
	rm -f /tmp/rngtest
	grep -q 'FIPS 140-2 successes' /tmp/rngtest.out
}}

# What the DMA path did: the driver's sysfs counters and the kernel's interrupt count.
dma_counters() {{
	d=$(echo {_SYSFS_DEV})
	echo "CMDLINE $(cat /proc/cmdline)"
	t=$(cat $d/dma_transfers) && e=$(cat $d/dma_errors) && i=$(cat $d/irqs_handled) || return 1
	echo "DMA-COUNTERS transfers=$t errors=$e irqs=$i"
	echo "IRQ-LINE $(grep -w my_rng /proc/interrupts)"
}}

# Unbind while /dev/hwrng is reading by DMA (its transfers are counting): remove waits
# for the read, leaves the engine idle (DMA_STATUS, read through /dev/mem) and Bus Master
# off (config COMMAND), the read ends with an error; the device binds again for misuse.
unbind_busy() {{
	d=$(echo {_SYSFS_DEV}); bdf=${{d##*/}}
	before=$(cat $d/dma_transfers) || return 1
	dd if=/dev/hwrng of=/dev/null bs=4096 count={_UNBIND_READ_BLOCKS} 2>/dev/null &
	pid=$!
	n=0
	while [ "$(cat $d/dma_transfers)" -le "$before" ]; do
		n=$((n + 1))
		[ $n -le {_UNBIND_WAIT_TENTHS} ] || {{ echo "no transfer began"; kill $pid; return 1; }}
		sleep 0.1
	done
	echo $bdf > {_SYSFS_DRV}/unbind || return 1
	wait $pid
	rc=$?
	bar=$(head -n 1 /sys/bus/pci/devices/$bdf/resource | cut -d ' ' -f 1)
	status=$(devmem $((bar + {_DMA_STATUS:#x})) 32)
	cmd=0x$(od -An -tx2 -j4 -N2 /sys/bus/pci/devices/$bdf/config | tr -d ' ')
	echo "UNBIND dd_rc=$rc DMA_STATUS=$status COMMAND=$cmd"
	echo $bdf > {_SYSFS_DRV}/bind || return 1
	[ "$rc" -ne 0 ] && [ $((status & {DMA_STATUS_BUSY:#x})) -eq 0 ] &&
		[ $((cmd & {COMMAND_MASTER:#x})) -eq 0 ] && [ -e /dev/my_rng_driver ]
}}

# Nothing went wrong in the kernel: no splat, no DMA fallback of the driver.
dmesg_clean() {{
	! dmesg | grep -E '{_DMESG_BAD}'
}}

debugcon_write() {{
	echo "{text}" > /dev/debugcon
}}

step enumerate enumerate
step insmod_my_rng insmod {image.guest_module("my_rng")}
step insmod_debugcon insmod {image.guest_module("debugcon")}
step rng_ref {image.guest_program("rng_ref")}
step hwrng hwrng
step hwrng_block hwrng_block
{rngtest_step}step dma_counters dma_counters
step unbind_busy unbind_busy
step debugcon_write debugcon_write
step misuse {image.guest_program("misuse")}
step rmmod_my_rng rmmod my_rng
step rmmod_debugcon rmmod debugcon
step dmesg_clean dmesg_clean
mark {END_STEP}
exit $fails
"""



@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def _guest_numbers(lines: Sequence[str]) -> dict[tuple[int, int], int]:
    found: dict[tuple[int, int], int] = {}
    for line in lines:
        m = _ROUND.search(line)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = int(m.group(3))
    return found


def _last(pattern: re.Pattern[str], lines: Sequence[str]) -> re.Match[str] | None:
    found = [m for ln in lines if (m := pattern.search(ln))]
    return found[-1] if found else None


def _irq_count(line: str) -> int | None:
    """The total of a /proc/interrupts line's per-CPU counts (`N: c0 c1 ... chip ...`)."""
    _, sep, rest = line.partition(":")
    counts = []
    for field in rest.split():
        if not field.isdigit():
            break
        counts.append(int(field))
    return sum(counts) if sep and counts else None


def _want_path(transport: str, irq: str) -> str:
    """The driver's hwrng path line for this device, transport and interrupt."""
    if not RNG_CAPS_VALUE & CAPS_DMA:
        return HWRNG_PATH_RNG64 if RNG_CAPS_VALUE & CAPS_RNG64 else HWRNG_PATH_RNG
    if transport != "vfio-user":  # x-pci-proxy-dev: QEMU delivers no interrupt under TCG
        return HWRNG_PATH_DMA_POLLING
    return HWRNG_PATH_DMA_MSI if irq == "msi" else HWRNG_PATH_DMA_INTX


def _stream_checks(lines: Sequence[str], rngtest: bool) -> list[Check]:
    """/dev/hwrng after rng_ref against pack24 of glibc's stream, and rngtest's verdict."""
    checks = []
    total = HWRNG_BYTES + HWRNG_BLOCK_BYTES + (RNGTEST_BYTES if rngtest else 0)
    stream = hwrng_stream(total)
    hexes = [m.group(1) for ln in lines if (m := _HWRNG.search(ln))]
    want_bytes = stream[:HWRNG_BYTES]
    got_bytes = bytes.fromhex(hexes[-1]) if hexes else b""
    checks.append(Check("hwrng bytes == pack24(glibc)", got_bytes == want_bytes,
                        f"{len(got_bytes)} bytes" + ("" if got_bytes == want_bytes else
                                                     f": got {got_bytes.hex()}, "
                                                     f"want {want_bytes.hex()}")))
    digests = {m.group(1): (m.group(2), int(m.group(3)))
               for ln in lines if (m := _SHA.search(ln))}
    parts = [("HWRNG-BLOCK", "hwrng 64 KiB block", HWRNG_BYTES, HWRNG_BLOCK_BYTES)]
    if rngtest:
        parts.append(("RNGTEST-INPUT", "rngtest input", HWRNG_BYTES + HWRNG_BLOCK_BYTES,
                      RNGTEST_BYTES))
    for key, what, start, size in parts:
        want = (hashlib.sha256(stream[start:start + size]).hexdigest(), size)
        got = digests.get(key)
        checks.append(Check(f"{what} sha256 == pack24(glibc)", got == want,
                            (f"{got[1]} bytes, {got[0][:16]}..." if got else f"no {key} line")
                            + ("" if got == want else f", want {want[1]} bytes, {want[0]}")))
    if rngtest:
        counts = {m.group(1): int(m.group(2)) for ln in lines if (m := _RNGTEST.search(ln))}
        ok_blocks, bad = counts.get("successes", 0), counts.get("failures", 0)
        blocks = ok_blocks + bad
        ratio = ok_blocks / blocks if blocks else 0.0
        passed = blocks >= RNGTEST_MIN_BLOCKS and ratio >= RNGTEST_MIN_PASS
        checks.append(Check(f"rngtest >= {RNGTEST_MIN_PASS:.0%} of FIPS blocks pass", passed,
                            f"{ok_blocks} of {blocks} ({ratio:.1%}); want >= "
                            f"{RNGTEST_MIN_BLOCKS} blocks" if counts else
                            "no rngtest summary on the serial console"))
    return checks


def _dma_checks(lines: Sequence[str], transport: str, irq: str) -> list[Check]:
    """The driver's counters and the kernel's interrupt line against the path asked for."""
    checks = []
    cmdline = _last(_CMDLINE, lines)
    nomsi = cmdline is not None and _NOMSI in cmdline.group(1).split()
    cmd_ok = cmdline is not None and nomsi == (irq == "intx")
    checks.append(Check(f"kernel command line asks for {irq}", cmd_ok,
                        (f"{_NOMSI} {'present' if nomsi else 'absent'}" if cmdline
                         else "no CMDLINE line")))
    if not RNG_CAPS_VALUE & CAPS_DMA:
        return checks
    m = _last(_COUNTERS, lines)
    transfers, errors, irqs = (int(g) for g in m.groups()) if m else (0, 0, 0)
    detail = f"transfers={transfers} errors={errors} irqs={irqs}" if m else "no DMA-COUNTERS line"
    checks.append(Check("DMA transfers done, none failed", bool(m) and transfers > 0 and not errors,
                        detail))
    line_m = _last(_IRQ_LINE, lines)
    line = line_m.group(1).strip() if line_m else ""
    count = _irq_count(line)
    if transport == "vfio-user":
        checks.append(Check("one interrupt per DMA transfer", bool(m) and irqs == transfers,
                            detail))
        kind_ok = ("MSI" in line) == (irq == "msi")
        checks.append(Check(f"/proc/interrupts: my_rng by {irq}, count == interrupts handled",
                            bool(m) and count == irqs and kind_ok,
                            line or "no my_rng line in /proc/interrupts"))
    else:
        checks.append(Check("no interrupt handled (polled)", bool(m) and irqs == 0 and
                            count in (0, None), f"{detail}; /proc/interrupts: {line or '-'}"))
    return checks


# A transaction log line: host time, simulation time ("-" or "<n>ns"), step, request.
_TXLOG = re.compile(r"(\d\d:\d\d:\d\d\.\d{6}) (-|\d+ns) (\S+) (.*)$")
_DEBUGCON_WRITE = re.compile(r"^IO_WRITE .* data=0x([0-9a-f]{8}) \[DEBUGCON\]")


def _txlog_checks(res: RunResult, rngtest: bool) -> list[Check]:
    """The transaction log names what the guest did: every line stamped, every step
    marked in order, and each step's traffic where the script put it: the reference
    program seeds the RNG, the hwrng step has the device write host memory (DMA), and the
    debugcon bytes are exactly the text, all in the debugcon_write step."""
    try:
        text = res.txlog.read_text(errors="replace")
    except OSError as exc:
        return [Check("txlog attributes transactions to guest steps", False,
                      f"no transaction log: {exc}")]
    rows = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    parsed = [m.groups() for ln in rows if (m := _TXLOG.match(ln))]
    checks = [Check("txlog: every line has a host time, a simulation time column, a step",
                    bool(rows) and len(parsed) == len(rows),
                    f"{len(rows) - len(parsed)} of {len(rows)} lines without them"
                    + next((f", first {ln!r}" for ln in rows if not _TXLOG.match(ln)), ""))]
    order: list[str] = []
    by_step: dict[str, list[str]] = {}
    for _, _, step, tx in parsed:
        if not order or order[-1] != step:
            order.append(step)
        by_step.setdefault(step, []).append(tx)
    want = [BOOT_STEP, *steps(rngtest), END_STEP]
    checks.append(Check("txlog: the guest's steps, marked in order", order == want,
                        " ".join(order) + ("" if order == want else f"; want {' '.join(want)}")))
    seeds = [tx for tx in by_step.get("rng_ref", ()) if "[SEED]" in tx and "WRITE" in tx]
    checks.append(Check("txlog: rng_ref seeds the RNG", bool(seeds),
                        f"{len(seeds)} SEED writes in rng_ref"))
    if RNG_CAPS_VALUE & CAPS_DMA:
        dma = [tx for tx in by_step.get("hwrng", ()) if tx.startswith("DEV MEM_WRITE")
               and "[host memory]" in tx]
        checks.append(Check("txlog: hwrng has the device write host memory", bool(dma),
                            f"{len(dma)} device writes in hwrng"))
    where = {step for step, txs in by_step.items()
             if any(_DEBUGCON_WRITE.match(tx) for tx in txs)}
    shift = stream_lane(DEBUGCON_PORT)[2]
    sent = bytes(int(m.group(1), 16) >> shift & 0xFF for tx in by_step.get("debugcon_write", ())
                 if (m := _DEBUGCON_WRITE.match(tx)))
    ok = sent == DEBUGCON_TEXT and where == {"debugcon_write"}
    checks.append(Check("txlog: the debugcon bytes, in debugcon_write only", ok,
                        f"{sent!r} in {sorted(where)}" + ("" if ok else
                                                          f"; want {DEBUGCON_TEXT!r}")))
    return checks


def evaluate(res: RunResult, irq: str = IRQ_MODES[0], rngtest: bool = False) -> list[Check]:
    """Judge one sign-off run (booted with interrupt `irq`, with or without the rngtest
    step); every check is listed, passed or not."""
    if irq not in IRQ_MODES:
        raise ValueError(f"irq must be one of {IRQ_MODES}, not {irq!r}")
    lines = res.serial_lines
    # The components behaved: the only acceptable failure is the guest script's own status
    # (its steps are judged one by one below); a dead server or QEMU, a panic or a timeout
    # fails here.
    components_ok = res.ok or (res.failed is Component.GUEST and res.guest_rc is not None)
    checks = [Check("run (server, QEMU, kernel)", components_ok,
                    "clean" if res.ok else f"{res.failed}: {res.reason}")]

    verdicts: dict[str, str] = {}
    for line in lines:
        m = _STEP.search(line)
        if m:
            verdicts[m.group(1)] = m.group(2)
    for name in steps(rngtest):
        verdict = verdicts.get(name)
        checks.append(Check(f"guest {name}", verdict == "PASS",
                            verdict or "no STEP marker on the serial console"))
    for line in lines:
        if line.startswith("CHECK ") and " FAIL " in line:
            checks.append(Check("misuse " + line.split()[1], False, line))

    # The reference program's numbers against two independent implementations of glibc.
    ctypes_seq = glibc_sequence(SEED, NUMBERS + HWRNG_BYTES // 3 + 1)
    model = GlibcRand(SEED)
    model_seq = [model.next() for _ in range(len(ctypes_seq))]
    oracle_ok = ctypes_seq == model_seq
    checks.append(Check("oracle models.glibc_rand == glibc", oracle_ok,
                        "agree" if oracle_ok else f"ctypes {ctypes_seq} model {model_seq}"))
    got = _guest_numbers(lines)
    want = ctypes_seq[:NUMBERS]
    for rnd in range(ROUNDS):
        seq = [got.get((rnd, i)) for i in range(NUMBERS)]
        checks.append(Check(f"rng_ref round {rnd} == glibc srand({SEED})", seq == want,
                            f"got {seq}" + ("" if seq == want else f", want {want}")))
    rounds = [[got.get((r, i)) for i in range(NUMBERS)] for r in range(ROUNDS)]
    checks.append(Check("rng_ref rounds identical", all(r == rounds[0] for r in rounds),
                        "identical" if all(r == rounds[0] for r in rounds) else str(rounds)))

    # /dev/hwrng after rng_ref: pack24 of the rest of the srand(0) sequence; the path the
    # driver took and what its DMA and interrupt counters say.
    checks += _stream_checks(lines, rngtest)
    path_m = _last(_HWRNG_PATH, lines)
    path = path_m.group(1) if path_m else ""
    want_path = _want_path(res.transport, irq)
    checks.append(Check("hwrng path as CAPS and the transport allow", path == want_path,
                        (path or "no HWRNG-PATH line") + ("" if path == want_path
                                                          else f", want {want_path!r}")))
    checks += _dma_checks(lines, res.transport, irq)

    # debugcon: exactly what the guest wrote (misuse never writes to it), nothing else.
    try:
        captured = res.capture.read_bytes()
    except OSError as exc:
        captured = b""
        cap_detail = f"no capture: {exc}"
    else:
        cap_detail = repr(captured)
    checks.append(Check("debugcon capture == written", captured == DEBUGCON_TEXT,
                        cap_detail + ("" if captured == DEBUGCON_TEXT
                                      else f", want {DEBUGCON_TEXT!r}")))
    checks += _txlog_checks(res, rngtest)
    return checks


def label(res: RunResult) -> str:
    """The backend as the tables name it: model, rtl-icarus, rtl-verilator."""
    return res.backend if res.backend == "model" else f"{res.backend}-{res.sim}"


def print_report(res: RunResult, checks: Sequence[Check], emit: Callable[[str], None]) -> None:
    emit("")
    emit("reference program output (guest, verbatim):")
    for line in res.serial_lines:
        if m := _ROUND.search(line):
            emit(line[m.start():])
    emit("")
    emit(f"transport {res.transport}, {res.qemu_version or 'QEMU version unknown'}, "
         f"backend {label(res)}")
    width = max(len(c.name) for c in checks)
    emit(f"{'check':<{width}}  result  detail")
    for c in checks:
        emit(f"{c.name:<{width}}  {'PASS' if c.passed else 'FAIL':<6}  {c.detail}")
    failed = [c for c in checks if not c.passed]
    emit("")
    emit(f"sign-off {'PASSED' if not failed else f'FAILED ({len(failed)} checks)'}; "
         f"artifacts in {res.out} (serial.log, debugcon.bin, txlog.txt, server.log"
         f"{', waves' if res.waves else ''})")


def run_signoff(
    backend: str, sim: str, waves: bool, out: Path, pin: int | None = None,
    timeouts: Timeouts | None = None, progress: bool = True, kernel: Path | None = None,
    transport: str = TRANSPORTS[0], record: Path | None = None, irq: str = IRQ_MODES[0],
    rngtest: bool | None = None,
) -> tuple[RunResult, list[Check]]:
    """Build the image, boot it with the backend, judge it; no printing of the table.
    `kernel` defaults to the PVH vmlinux (bench/ also times the bzImage); `record`: the
    server records the device's traffic there (qbridge.record, for qbridge.replay);
    `irq`: "msi", or "intx" (the kernel booted with pci=nomsi); `rngtest`: run rngtest on
    RNGTEST_BYTES of /dev/hwrng, by default where that takes seconds: over vfio-user on
    the model and on the RTL in Verilator (guest RAM DMA at ~1-6 MB/s with the txlog;
    Icarus is 20x slower, and proxy boots are judged on the polled path, which the 64 KiB
    block covers)."""
    if irq not in IRQ_MODES:
        raise ValueError(f"irq must be one of {IRQ_MODES}, not {irq!r}")
    if rngtest is None:
        rngtest = transport == "vfio-user" and (backend == "model" or sim == "verilator")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    initrd = image.build_initramfs(guest_script(rngtest), out / "signoff.cpio",
                                   extra_files=image.rngtest_files() if rngtest else None)
    kernel = kernel or image.vmlinux()
    if timeouts is None:
        rtl = backend == "rtl"
        timeouts = Timeouts(server_ready=300.0 if rtl else 60.0, run=900.0 if rtl else 300.0)
    cfg = LaunchConfig(
        kernel=kernel, initrd=initrd, out=out, backend=backend, transport=transport, sim=sim,
        waves=waves, pin=pin,
        # Also on the command line (the image's /init sets it too): khwrngd must never
        # read the deterministic generator behind the programs' backs (my_rng.c).
        append=f"{DEFAULT_APPEND} rng_core.default_quality=0"
        + (f" {_NOMSI}" if irq == "intx" else ""),
        timeouts=timeouts, progress=sys.stdout if progress else None, record=record,
    )
    res = launch(cfg)
    return res, evaluate(res, irq=irq, rngtest=rngtest)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qbridge.signoff",
                                description="Co-simulated Linux boot sign-off.")
    p.add_argument("--backend", choices=("model", "rtl"), default="model")
    p.add_argument("--transport", choices=TRANSPORTS, default=TRANSPORTS[0],
                   help="proxy: host QEMU 7.2, x-pci-proxy-dev; vfio-user: QEMU 11.1 in "
                        "the project's chroot (make qemu11)")
    p.add_argument("--sim", choices=("icarus", "verilator"), default="icarus")
    p.add_argument("--waves", type=int, choices=(0, 1), default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pin", type=int, default=None, metavar="CPU",
                   help="pin QEMU and the device server to one CPU")
    p.add_argument("--record", type=Path, default=None, metavar="FILE",
                   help="record the device's traffic for python -m qbridge.replay")
    p.add_argument("--irq", choices=IRQ_MODES, default=IRQ_MODES[0],
                   help="the device's interrupt: msi, or intx (the guest boots pci=nomsi)")
    p.add_argument("--rngtest", type=int, choices=(0, 1), default=None,
                   help="rngtest on 2.5 MiB of /dev/hwrng (default: model over vfio-user)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(name)s: %(levelname)s: %(message)s")
    stop_on_sigterm()
    try:
        res, checks = run_signoff(args.backend, args.sim, bool(args.waves), args.out, args.pin,
                                  transport=args.transport, record=args.record, irq=args.irq,
                                  rngtest=None if args.rngtest is None else bool(args.rngtest))
    except image.ImageError as exc:
        log.error("guest image: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; everything started was stopped")
        return 130
    print_report(res, checks, print)
    if args.record is not None:
        print(f"the device's traffic is recorded in {args.record} (python -m qbridge.replay)")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
