"""Issue 3: a Debian kernel under stock QEMU enumerates and drives the MODEL backend.

One boot (module fixture) of Debian's kernel with a script that, without our drivers,
reads the function's identity from sysfs, drives BAR0 through /dev/mem (busybox devmem)
and writes bytes to port 0xe9 through /dev/port.  The host parses the script's output and
compares it with the register map (models/contract/regmap.py) and glibc through ctypes.  A broken
QEMU, kernel or device server makes these tests fail, never skip: every test first
asserts the run was clean.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from qbridge.launch import RunResult

from models.contract.regmap import BAR0_SIZE, IDENTITY, RNG_ID_VALUE
from tests.guest_boot import assert_clean, boot_on_model

SEED = 0x1234_5678
READS = 8
# One write(2) per byte: a multi-byte write to /dev/port goes to consecutive ports
# (docs/measured-facts.md).  A NUL, a high byte and a newline show bytes pass unchanged.
PORT_BYTES = b"model says hi\x00\xff\n"

# PCI resource flags (include/linux/ioport.h).
IORESOURCE_IO = 0x100
IORESOURCE_MEM = 0x200
IORESOURCE_PREFETCH = 0x2000
IORESOURCE_MEM_64 = 0x100000


def _script() -> str:
    port_writes = "\n".join(
        f"printf '\\{b:03o}' | dd of=/dev/port bs=1 seek={0xE9} count=1 2>/dev/null || exit 1"
        for b in PORT_BYTES
    )
    return f"""\
bdf=
for d in /sys/bus/pci/devices/*; do
	[ "$(cat $d/vendor)" = {IDENTITY.vendor:#06x} ] || continue
	[ "$(cat $d/device)" = {IDENTITY.device:#06x} ] && bdf=$d
done
[ -n "$bdf" ] || {{ echo "NO-DEVICE"; exit 1; }}
for f in vendor device class revision subsystem_vendor subsystem_device; do
	echo "SYSFS $f $(cat $bdf/$f)"
done
echo "RESOURCE0 $(head -n 1 $bdf/resource)"
# No driver is bound: enabling makes the PCI core set COMMAND.MEM (design.md: a memory
# request with it clear completes UR).
[ "$(cat $bdf/enable)" != 0 ] || echo 1 > $bdf/enable
read start end flags < $bdf/resource
base=$((start))
echo "MMIO ID $(devmem $((base + 8)) 32)"
echo "MMIO UNSEEDED $(devmem $base 32)"
devmem $((base + 4)) 32 {SEED}
i=0
while [ $i -lt {READS} ]; do
	echo "MMIO RNG $(devmem $base 32)"
	i=$((i + 1))
done
echo "MMIO SEED-READ $(devmem $((base + 4)) 32)"
{port_writes}
"""


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return boot_on_model(_script(), tmp_path_factory.mktemp("boot-model"), "boot-model")


def _clean(res: RunResult) -> RunResult:
    return assert_clean(res, tail=20)


def _tagged(res: RunResult, tag: str) -> list[str]:
    return [m.group(1) for ln in res.serial_lines if (m := re.search(rf"{tag} (.*)$", ln))]


def _hex(text: str) -> int:
    return int(text.strip(), 16)


def test_sysfs_shows_the_pci_identity_of_the_register_map(boot: RunResult) -> None:
    res = _clean(boot)
    sysfs = dict(item.split(" ", 1) for item in _tagged(res, "SYSFS"))
    want = {
        "vendor": IDENTITY.vendor, "device": IDENTITY.device,
        # sysfs `class` is the 24-bit class code (base, sub-class, prog-if).
        "class": IDENTITY.class_code, "revision": IDENTITY.revision,
        "subsystem_vendor": IDENTITY.subsystem_vendor, "subsystem_device": IDENTITY.subsystem,
    }
    got = {k: _hex(v) for k, v in sysfs.items()}
    assert got == want, f"sysfs identity {got} differs from the register map's {want}"


def test_bar0_is_a_4k_32bit_non_prefetchable_memory_resource(boot: RunResult) -> None:
    res = _clean(boot)
    start, end, flags = (_hex(x) for x in _tagged(res, "RESOURCE0")[0].split())
    assert start != 0 and start % BAR0_SIZE == 0, f"BAR0 was not assigned: {start:#x}"
    assert end - start + 1 == BAR0_SIZE, f"BAR0 size {end - start + 1:#x}, want {BAR0_SIZE:#x}"
    assert flags & IORESOURCE_MEM and not flags & IORESOURCE_IO, \
        f"BAR0 flags {flags:#x}: not a memory resource"
    assert not flags & (IORESOURCE_PREFETCH | IORESOURCE_MEM_64), \
        f"BAR0 flags {flags:#x}: prefetchable or 64-bit, want 32-bit non-prefetchable"


def test_mmio_reads_after_seed_equal_glibc(
    boot: RunResult, glibc: Callable[[int, int], list[int]]
) -> None:
    res = _clean(boot)
    mmio = _tagged(res, "MMIO")
    values = {k: [_hex(v) for tag, v in (m.split(" ", 1) for m in mmio) if tag == k]
              for k in ("ID", "UNSEEDED", "RNG", "SEED-READ")}
    assert values["ID"] == [RNG_ID_VALUE], f"ID register read {values['ID']}"
    # Before any SEED write the device behaves as after srand(1) (design.md).
    assert values["UNSEEDED"] == glibc(1, 1), \
        f"first read before seeding {values['UNSEEDED']}, glibc srand(1) gives {glibc(1, 1)}"
    assert values["RNG"] == glibc(SEED, READS), \
        f"RNG reads after SEED={SEED:#x}: {values['RNG']}, glibc: {glibc(SEED, READS)}"
    assert values["SEED-READ"] == [0], f"SEED read back {values['SEED-READ']}, want 0"


def test_port_0xe9_bytes_reach_the_capture_in_order(boot: RunResult) -> None:
    res = _clean(boot)
    captured = Path(res.capture).read_bytes()
    assert captured == PORT_BYTES, f"debugcon capture {captured!r}, guest wrote {PORT_BYTES!r}"


def test_boot_runs_without_server_errors(boot: RunResult) -> None:
    res = _clean(boot)
    assert res.server_rc == 0, f"device server exited {res.server_rc}"
    assert res.qemu_rc == 0, f"QEMU exited {res.qemu_rc}"
    txlog = Path(res.txlog).read_text()
    assert "CFG_READ" in txlog and "MEM_READ" in txlog, "transaction log misses the accesses"
