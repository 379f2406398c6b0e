"""The guest image (qbridge.image) and the debugcon driver, booted on plain stock QEMU.

No device server here: QEMU's own isa-debugcon writes to a file chardev, so these tests
prove the kernel, the initramfs, our modules' build and the debugcon driver on their own.
Independent oracles: kmod's `modinfo` and Debian's own modules for the vermagic, binutils'
`readelf` for the executables, GNU `cpio` for the archive, QEMU's device for the bytes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from qbridge import image
from qbridge.launch import DEFAULT_APPEND

QEMU = "qemu-system-x86_64"
APPEND = DEFAULT_APPEND
BOOT_TIMEOUT = 180  # seconds; a boot takes ~3 s on an idle machine, TCG on 2 shared cores
TOOL_TIMEOUT = 60

DEBUGCON_CHECKS = {"debugcon_open", "debugcon_second_open", "debugcon_write_bad_ptr",
                   "debugcon_reopen"}


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                          check=True, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    """Kernel, modules and programs, built once (cached in build/guest)."""
    return {"vmlinux": image.vmlinux(), **image.modules(), **image.programs()}


def _boot(tmp_path: Path, script: str, debugcon: Path | None) -> str:
    """Boot the guest kernel with `script` as the run script; return the serial output."""
    initrd = image.build_initramfs(script, tmp_path / "initramfs.cpio")
    cmd = [QEMU, "-accel", "tcg", "-m", "256M", "-nographic", "-no-reboot",
           "-kernel", str(image.vmlinux()), "-initrd", str(initrd), "-append", APPEND]
    if debugcon is not None:
        cmd += ["-chardev", f"file,id=dbg,path={debugcon}",
                "-device", "isa-debugcon,iobase=0xe9,chardev=dbg"]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=BOOT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        pytest.fail(f"guest did not power off within {BOOT_TIMEOUT} s; serial:\n{out}")
    serial = proc.stdout
    (tmp_path / "serial.log").write_text(serial)
    assert proc.returncode == 0, f"QEMU exited {proc.returncode}: {proc.stderr}\n{serial}"
    return serial


def _end_status(serial: str) -> int:
    m = re.search(rf"{image.END_MARKER} rc=(-?\d+)", serial)
    assert m is not None, f"no '{image.END_MARKER} rc=' marker on the serial console:\n{serial}"
    return int(m.group(1))


def test_vmlinux_is_the_uncompressed_debian_kernel(built: dict[str, Path]) -> None:
    ver = image.kernel_version()
    data = built["vmlinux"].read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "vmlinux is not a 64-bit ELF file"
    assert int.from_bytes(data[18:20], "little") == 62, "vmlinux is not an x86-64 ELF"
    assert f"Linux version {ver} ".encode() in data, (
        f"vmlinux has no 'Linux version {ver}' banner: extracted the wrong kernel")
    assert len(data) > 2 * image.bzimage().stat().st_size, "vmlinux is not decompressed"


def test_modules_vermagic_matches_debians_own_modules(built: dict[str, Path]) -> None:
    ver = image.kernel_version()
    stock = next(Path(f"/lib/modules/{ver}/kernel/drivers").rglob("*.ko"), None)
    assert stock is not None, f"no stock module under /lib/modules/{ver} to compare with"
    want = _run(["modinfo", "-F", "vermagic", str(stock)]).stdout.strip()
    assert want.split()[0] == ver, f"{stock} has vermagic {want!r}, kernel is {ver}"
    for name in image.MODULE_NAMES:
        got = _run(["modinfo", "-F", "vermagic", str(built[name])]).stdout.strip()
        assert got == want, f"{name}.ko vermagic {got!r} differs from Debian's {want!r}"
        assert image.module_vermagic(built[name]).strip() == got, (
            f"qbridge.image reads {name}.ko's vermagic differently from modinfo")


def test_user_programs_are_static_executables(built: dict[str, Path]) -> None:
    for name in image.PROGRAM_NAMES:
        headers = _run(["readelf", "-hlW", str(built[name])]).stdout
        assert "EXEC" in headers or "DYN" in headers, f"{name} is not an executable"
        assert "INTERP" not in headers, f"{name} needs a dynamic loader: not linked statically"
        assert "DYNAMIC" not in headers, f"{name} has a dynamic section"


def test_initramfs_holds_init_busybox_modules_programs_and_extras(
        built: dict[str, Path], tmp_path: Path) -> None:
    out = image.build_initramfs("echo hi\n", tmp_path / "i.cpio",
                                extra_files={"/etc/cosim/data.txt": b"payload\n"})
    listing = _run(["cpio", "-itv", "-F", str(out)]).stdout
    # "-rw-r--r-- 1 root root 8 Jan 1 1970 name" or "... name -> target" for symlinks
    names = {line.split(" -> ")[0].split()[-1] for line in listing.splitlines()}
    for want in ["init", "bin/busybox", "bin/sh", "dev/console", image.GUEST_SCRIPT.lstrip("/"),
                 "etc/cosim/data.txt",
                 *(image.guest_module(n).lstrip("/") for n in image.MODULE_NAMES),
                 *(image.guest_program(n).lstrip("/") for n in image.PROGRAM_NAMES)]:
        assert want in names, f"{want} missing from the initramfs:\n{listing}"
    console = next(line for line in listing.splitlines() if line.endswith(" dev/console"))
    assert console.startswith("c") and re.search(r"\b5,\s*1\b", console), (
        f"dev/console is not the character device 5,1: {console}")
    extracted = _run(["cpio", "-i", "--to-stdout", "-F", str(out), "etc/cosim/data.txt"])
    assert extracted.stdout == "payload\n", f"extra file content differs: {extracted.stdout!r}"


def test_driver_build_is_cached_until_a_source_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "linux-driver"
    shutil.copytree(image.DRIVER_SRC, src, ignore=shutil.ignore_patterns(
        "*.ko", "*.o", "*.mod*", "*.cmd", "Module.symvers", "modules.order"))
    monkeypatch.setattr(image, "DRIVER_SRC", src)
    out = tmp_path / "build"
    first = image.modules(out)["my_rng"].stat().st_mtime_ns
    assert image.modules(out)["my_rng"].stat().st_mtime_ns == first, (
        "unchanged sources were rebuilt")
    prog = image.programs(out)["misuse"].stat().st_mtime_ns
    with open(src / "user" / "misuse.c", "a") as fh:
        fh.write("/* changed */\n")
    assert image.programs(out)["misuse"].stat().st_mtime_ns != prog, (
        "a changed source was not rebuilt")


def test_debugcon_driver_delivers_every_byte_in_order_to_isa_debugcon(
        built: dict[str, Path], tmp_path: Path) -> None:
    capture = tmp_path / "debugcon.out"
    long_text = "".join(f"{i}\n" for i in range(1, 301))  # > one 64-byte chunk of the driver
    script = f"""
insmod {image.guest_module("debugcon")} || exit 10
# no RNG device on this machine: the PCI driver loads but binds nothing
insmod {image.guest_module("my_rng")} || exit 11
test -e /dev/my_rng_driver && exit 12
ls -l /dev/debugcon | grep -q '^crw-rw-rw-' || exit 13
echo "hello from Linux" > /dev/debugcon || exit 14
su -s /bin/sh nobody -c 'echo "from nobody" > /dev/debugcon' || exit 15
seq 1 300 > /tmp/long && cat /tmp/long > /dev/debugcon || exit 16
misuse debugcon || exit 17
su -s /bin/sh nobody -c 'misuse debugcon' || exit 18
rmmod debugcon || exit 19
rmmod my_rng || exit 20
test -e /dev/debugcon && exit 21
exit 0
"""
    serial = _boot(tmp_path, script, capture)
    status = _end_status(serial)
    assert status == 0, f"guest script failed at step {status}:\n{serial}"

    want = b"hello from Linux\nfrom nobody\n" + long_text.encode()
    got = capture.read_bytes()
    assert got == want, (f"debugcon capture differs: {len(got)} bytes, expected {len(want)}; "
                         f"first difference at {_first_difference(got, want)}")

    checks = re.findall(r"^CHECK (\S+) (PASS|FAIL)", serial, re.MULTILINE)
    failed = [name for name, verdict in checks if verdict != "PASS"]
    assert not failed, f"misuse checks failed: {failed}\n{serial}"
    names = [name for name, _ in checks]
    for name in DEBUGCON_CHECKS:
        assert names.count(name) == 2, f"misuse check {name} not run as root and as nobody"


def test_debugcon_driver_refuses_to_load_without_a_debug_console(
        built: dict[str, Path], tmp_path: Path) -> None:
    script = f"""
insmod {image.guest_module("debugcon")} && exit 10
test -e /dev/debugcon && exit 11
dmesg | grep -q 'debugcon: no debug console at port 0xe9 (read 0xff' || exit 12
exit 0
"""
    serial = _boot(tmp_path, script, None)
    status = _end_status(serial)
    assert status == 0, f"guest script failed at step {status}:\n{serial}"


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))
