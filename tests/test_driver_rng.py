"""The RNG driver (linux-driver/my_rng.c) in a real guest, against the MODEL backend.

One boot (module fixture) of Debian's kernel under stock QEMU with our device server
(qbridge.launch, model backend): the script loads my_rng, runs the reference program,
reads /dev/hwrng, leaves the kernel's hwrng thread time to run between SEED and RAND and
between rng_ref and /dev/hwrng (the driver must give it nothing: my_rng.c), runs the
misuse checks and unloads the driver.  Expected numbers come from glibc
through ctypes (tests/conftest.py), never from the model.  A broken boot fails every test.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest
from qbridge import image
from qbridge.launch import LaunchConfig, RunResult, Timeouts, launch
from qbridge.signoff import HWRNG_PATH_DMA_POLLING, HWRNG_PATH_RNG, pack24

from tests.guest_boot import assert_clean, boot_on_model

# Pauses (rng_ref's between SEED and the first RAND; before reading /dev/hwrng) longer
# than the hwrng thread's period early after boot: max(1 s, uptime / 2)
# (drivers/char/random.c, crng_reseed_interval()).
PAUSE_S = 3
HWRNG_BYTES = 64

ROUND_LINE = re.compile(r"^(PAUSED )?Round (\d) number (\d): (\d+)$", re.MULTILINE)


def _script() -> str:
    return f"""\
insmod {image.guest_module("my_rng")} || exit 10
echo "NODE $(ls -l /dev/my_rng_driver)"
echo "HWRNG-CURRENT $(cat /sys/class/misc/hw_random/rng_current)"
rng_ref || exit 11
sleep {PAUSE_S}
dd if=/dev/hwrng of=/tmp/hwrng bs={HWRNG_BYTES} count=1 2>/dev/null
echo "HWRNG $(od -An -tx1 -v /tmp/hwrng | tr -d ' \\n')"
rng_ref {PAUSE_S} | sed 's/^/PAUSED /'
misuse rng || exit 13
rmmod my_rng || exit 14
test -e /dev/my_rng_driver && exit 15
dmesg | grep -i -E 'my_rng|hwrng'
exit 0
"""


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return boot_on_model(_script(), tmp_path_factory.mktemp("driver-rng"), "driver-rng")


def _clean(res: RunResult) -> RunResult:
    return assert_clean(res, tail=30)


def _rounds(serial: str, paused: bool) -> dict[int, list[int]]:
    rounds: dict[int, list[int]] = {}
    for m in ROUND_LINE.finditer(serial):
        if bool(m.group(1)) != paused:
            continue
        rnd, num, value = int(m.group(2)), int(m.group(3)), int(m.group(4))
        assert num == len(rounds.setdefault(rnd, [])), f"out-of-order line: {m.group(0)}"
        rounds[rnd].append(value)
    return rounds


def test_driver_binds_and_creates_root_only_misc_node(boot: RunResult) -> None:
    serial = _clean(boot).serial
    node = re.search(r"^NODE (\S+)", serial, re.MULTILINE)
    assert node is not None, f"no /dev/my_rng_driver listing:\n{serial}"
    assert node.group(1).startswith("crw-------"), f"/dev/my_rng_driver is {node.group(1)}"
    assert "RNG interface version 1" in serial, "probe did not log the ID register's version"
    # The device's CAPS advertises DMA (models/contract/regmap.py): the driver must take
    # it, polled, as x-pci-proxy-dev delivers no interrupt under TCG (docs/dma.md).
    assert HWRNG_PATH_DMA_POLLING in serial, (
        "the driver did not log the polled DMA hwrng path although CAPS advertises DMA")
    assert re.search(r"^HWRNG-CURRENT my_rng\s*$", serial, re.MULTILINE), (
        "my_rng is not the current hw_random source")


def test_reference_program_prints_glibc_seed_0_twice(
        boot: RunResult, glibc: Callable[[int, int], list[int]]) -> None:
    rounds = _rounds(_clean(boot).serial, paused=False)
    want = glibc(0, 5)
    assert rounds == {0: want, 1: want}, f"rng_ref printed {rounds}, glibc srand(0) gives {want}"


def test_hwrng_thread_never_takes_numbers_between_seed_and_rand(
        boot: RunResult, glibc: Callable[[int, int], list[int]]) -> None:
    rounds = _rounds(_clean(boot).serial, paused=True)
    want = glibc(0, 5)
    assert rounds == {0: want, 1: want}, (
        f"with a {PAUSE_S} s pause after SEED, rng_ref printed {rounds}, glibc srand(0) "
        f"gives {want}: something read the generator while /dev/my_rng_driver was open")


def test_dev_hwrng_returns_the_numbers_after_the_reference_program(
        boot: RunResult, glibc: Callable[[int, int], list[int]]) -> None:
    serial = _clean(boot).serial
    m = re.search(r"^HWRNG ([0-9a-f]*)$", serial, re.MULTILINE)
    assert m is not None, f"no HWRNG line:\n{serial}"
    got = bytes.fromhex(m.group(1))
    assert len(got) == HWRNG_BYTES, f"/dev/hwrng gave {len(got)} bytes"
    # rng_ref left the generator seeded with 0 and 5 numbers consumed; nothing else may
    # have read it since, however long the guest waited.  24 bits per number (docs/hwrng.md).
    want = pack24(glibc(0, 5 + HWRNG_BYTES // 3 + 1)[5:])[:HWRNG_BYTES]
    assert got == want, (f"/dev/hwrng gave {got.hex()}, pack24 of the next numbers of "
                         f"glibc's srand(0) is {want.hex()}: something else read the generator")


def test_misuse_checks_all_pass(boot: RunResult) -> None:
    serial = _clean(boot).serial
    checks = dict(re.findall(r"^CHECK (\S+) (PASS|FAIL)", serial, re.MULTILINE))
    for name in ("rng_rand_null", "rng_rand_unmapped", "rng_rand_kernel_ptr", "rng_seed_null",
                 "rng_seed_unmapped", "rng_seed_kernel_ptr", "rng_unknown_nr",
                 "rng_unknown_size", "rng_unknown_none", "rng_concurrent"):
        assert checks.get(name) == "PASS", f"misuse check {name}: {checks.get(name)}\n{serial}"


def test_guest_script_completes(boot: RunResult) -> None:
    assert _clean(boot).guest_rc == 0


def test_driver_reads_hwrng_4_bytes_at_a_time_from_a_device_without_caps(
        tmp_path, glibc: Callable[[int, int], list[int]]) -> None:
    # A device of the interface before RNG64 (CAPS and RNG64 read 0, as unused offsets
    # do): the driver must take the 4-byte path, and /dev/hwrng must stay glibc's stream.
    script = f"""\
insmod {image.guest_module("my_rng")} || exit 10
echo my_rng > /sys/class/misc/hw_random/rng_current
rng_ref > /dev/null || exit 11
dd if=/dev/hwrng of=/tmp/hwrng bs={HWRNG_BYTES} count=1 2>/dev/null
echo "HWRNG $(od -An -tx1 -v /tmp/hwrng | tr -d ' \\n')"
dmesg | grep -o 'hwrng reads: .*'
rmmod my_rng || exit 14
exit 0
"""
    initrd = image.build_initramfs(script, tmp_path / "rng32.cpio")
    res = _clean(launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path,
                                     backend="model", timeouts=Timeouts(run=240.0),
                                     server_module="tests.rng32_device_server")))
    assert HWRNG_PATH_RNG in res.serial, (
        f"the driver did not take the 4-byte path on a device without CAPS:\n{res.serial}")
    m = re.search(r"^HWRNG ([0-9a-f]*)$", res.serial, re.MULTILINE)
    assert m is not None, f"no HWRNG line:\n{res.serial}"
    got = bytes.fromhex(m.group(1))
    want = pack24(glibc(0, 5 + HWRNG_BYTES // 3 + 1)[5:])[:HWRNG_BYTES]
    assert got == want, (f"/dev/hwrng gave {got.hex()}, pack24 of glibc srand(0) after 5 "
                         f"numbers: {want.hex()}")
    assert res.guest_rc == 0, f"guest script exited {res.guest_rc}"


def test_failed_dma_transfers_are_served_by_mmio_with_the_same_bytes(
        tmp_path, glibc: Callable[[int, int], list[int]]) -> None:
    # Every transfer ends with ERROR at once, consuming nothing (tests/dma_error_device_server):
    # the driver must warn, count it, and serve each read by MMIO, glibc's stream unchanged.
    block = 4096
    script = f"""\
insmod {image.guest_module("my_rng")} || exit 10
cur=$(cat /sys/class/misc/hw_random/rng_current)
[ "$cur" = my_rng ] || echo my_rng > /sys/class/misc/hw_random/rng_current || exit 12
rng_ref > /dev/null || exit 11
dd if=/dev/hwrng of=/tmp/hwrng bs={block} count=1 2>/dev/null
echo "HWRNG-SHA256 $(sha256sum /tmp/hwrng | cut -d ' ' -f 1) $(wc -c < /tmp/hwrng)"
d=$(echo /sys/bus/pci/drivers/my_rng/0000:*)
echo "COUNTERS transfers=$(cat $d/dma_transfers) errors=$(cat $d/dma_errors)"
dmesg | grep -o 'DMA transfer failed.*'
rmmod my_rng || exit 14
exit 0
"""
    initrd = image.build_initramfs(script, tmp_path / "dma-error.cpio")
    res = _clean(launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path,
                                     backend="model", timeouts=Timeouts(run=240.0),
                                     server_module="tests.dma_error_device_server")))
    assert res.guest_rc == 0, f"guest script exited {res.guest_rc}:\n{res.serial}"
    want = pack24(glibc(0, 5 + block // 3 + 1)[5:])[:block]
    m = re.search(r"^HWRNG-SHA256 ([0-9a-f]{64}) (\d+)\s*$", res.serial, re.MULTILINE)
    assert m is not None, f"no HWRNG-SHA256 line:\n{res.serial}"
    assert (m.group(1), int(m.group(2))) == (hashlib.sha256(want).hexdigest(), block), (
        f"/dev/hwrng by the MMIO fallback gave {m.group(2)} bytes, sha256 {m.group(1)}; "
        f"pack24 of glibc srand(0) after 5 numbers: {hashlib.sha256(want).hexdigest()}")
    c = re.search(r"^COUNTERS transfers=(\d+) errors=(\d+)\s*$", res.serial, re.MULTILINE)
    assert c is not None, f"no COUNTERS line:\n{res.serial}"
    assert int(c.group(1)) == 0 and int(c.group(2)) > 0, (
        f"counters {c.group(0)}: every transfer failed, none may count as done")
    assert "DMA transfer failed (DMA_STATUS 0x00000004), reading by MMIO" in res.serial, (
        f"the driver did not warn about the failed transfers:\n{res.serial}")


def test_a_hanging_dma_transfer_is_stopped_and_the_read_served_by_mmio(
        tmp_path, glibc: Callable[[int, int], list[int]]) -> None:
    # A transfer stays BUSY until Bus Master is cleared (tests/dma_stuck_device_server):
    # after its bounded wait (10 s, my_rng.c) the driver stops it, warns, and serves the
    # read by MMIO, glibc's stream unchanged; one read, so one timeout.
    script = f"""\
insmod {image.guest_module("my_rng")} || exit 10
cur=$(cat /sys/class/misc/hw_random/rng_current)
[ "$cur" = my_rng ] || echo my_rng > /sys/class/misc/hw_random/rng_current || exit 12
rng_ref > /dev/null || exit 11
dd if=/dev/hwrng of=/tmp/hwrng bs={HWRNG_BYTES} count=1 2>/dev/null
echo "HWRNG $(od -An -tx1 -v /tmp/hwrng | tr -d ' \\n')"
d=$(echo /sys/bus/pci/drivers/my_rng/0000:*)
echo "COUNTERS transfers=$(cat $d/dma_transfers) errors=$(cat $d/dma_errors)"
rmmod my_rng || exit 14
dmesg | grep -o 'DMA transfer timed out.*\\|DMA .*still busy.*'
exit 0
"""
    initrd = image.build_initramfs(script, tmp_path / "dma-stuck.cpio")
    res = _clean(launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=tmp_path,
                                     backend="model", timeouts=Timeouts(run=240.0),
                                     server_module="tests.dma_stuck_device_server")))
    assert res.guest_rc == 0, f"guest script exited {res.guest_rc}:\n{res.serial}"
    m = re.search(r"^HWRNG ([0-9a-f]*)$", res.serial, re.MULTILINE)
    assert m is not None, f"no HWRNG line:\n{res.serial}"
    want = pack24(glibc(0, 5 + HWRNG_BYTES // 3 + 1)[5:])[:HWRNG_BYTES]
    assert bytes.fromhex(m.group(1)) == want, (
        f"/dev/hwrng after the timeout gave {m.group(1)}, want {want.hex()}")
    assert re.search(r"^COUNTERS transfers=0 errors=1\s*$", res.serial, re.MULTILINE), (
        f"one read, one transfer timed out, none done:\n{res.serial}")
    assert "DMA transfer timed out (DMA_STATUS 0x00000001), reading by MMIO" in res.serial, (
        f"the driver did not warn about the hanging transfer:\n{res.serial}")
    assert "still busy" not in res.serial, (
        f"clearing Bus Master did not leave the engine idle:\n{res.serial}")
