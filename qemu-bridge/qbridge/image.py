"""The guest image: Debian's kernel, our modules and programs, in a busybox initramfs.

Everything comes from Debian packages on the host (design.md, "Guest image and boot"):
- the kernel the guest boots is the one `linux-image-amd64` depends on (never the host's
  running kernel: `uname -r` may be any container host's); its bzImage is in /boot;
- the modules in linux-driver/ are built against that version's `linux-headers-<ver>`;
- the user programs in linux-driver/user/ are linked statically (the initramfs has no
  C library), and busybox-static provides the shell and every tool.

Ref: docs/measured-facts.md -- QEMU boots an uncompressed ELF `vmlinux` through its PVH entry
point about 2x faster than the bzImage (no self-decompression under TCG), so `vmlinux()`
extracts it from the bzImage: the payload is one xz stream (CONFIG_KERNEL_XZ), found by
its magic and decompressed with Python's lzma, as the kernel's scripts/extract-vmlinux does.

Builds are cached in the output folder (default build/guest) and redone only when their
inputs change (bzImage contents; driver sources, headers and compiler); the commands and
their output go to `build.log` there.

    python -m qbridge.image --out build/guest [--script FILE --initramfs FILE]

Python API (used by the launcher and the sign-off): `kernel_version()`, `bzimage()`,
`headers_dir()`, `vmlinux()`, `modules()`, `programs()`, `build_initramfs(script, out)`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from models.contract.layout import DRIVER, guest_dir

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "GUEST_BIN_DIR",
    "GUEST_MODULE_DIR",
    "MODULE_NAMES",
    "PROGRAM_NAMES",
    "ImageError",
    "build_initramfs",
    "bzimage",
    "guest_module",
    "guest_program",
    "headers_dir",
    "kernel_version",
    "main",
    "module_vermagic",
    "modules",
    "programs",
    "rngtest_files",
    "vmlinux",
]

log = logging.getLogger("cosim.image")

DRIVER_SRC = DRIVER
DEFAULT_OUT = guest_dir()

KERNEL_PACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")  # from busybox-static: a static binary
# Debian's FIPS 140-2 tester (rng-tools5), dynamically linked: guest_rngtest() is where
# the guest has it, with the libraries ldd lists (rngtest_files()).
RNGTEST = Path("/usr/bin/rngtest")

MODULE_NAMES = ("my_rng", "debugcon", "mmio_bench")
PROGRAM_NAMES = ("rng_ref", "misuse", "rng_bench")
# Where the initramfs puts them: `insmod /lib/modules/cosim/my_rng.ko`, `rng_ref` on PATH.
GUEST_MODULE_DIR = "/lib/modules/cosim"
GUEST_BIN_DIR = "/usr/bin"
GUEST_SCRIPT = "/cosim/run.sh"

# Printed by /init on the serial console around the run script; the launcher waits for
# END_MARKER followed by " rc=<exit status of the script>".
BEGIN_MARKER = "COSIM-BEGIN"
END_MARKER = "COSIM-END"

# Subprocess time limits (seconds).  A module build takes ~5 s here, a static link ~1 s.
_DPKG_TIMEOUT = 30
_BUILD_TIMEOUT = 600
_XZ_MAGIC = b"\xfd7zXZ\x00"


class ImageError(RuntimeError):
    """A missing input (package, file) or a failed build step, with what to do about it."""


# ---------------------------------------------------------------------------------------
# Inputs from Debian packages


def kernel_version() -> str:
    """The kernel release `linux-image-amd64` depends on, e.g. ``6.1.0-56-amd64``."""
    try:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}\t${Depends}", KERNEL_PACKAGE],
            capture_output=True, text=True, timeout=_DPKG_TIMEOUT, check=False,
        )
    except FileNotFoundError as exc:
        raise ImageError("dpkg-query not found: the guest image needs a Debian host") from exc
    status, _, depends = proc.stdout.partition("\t")
    if proc.returncode != 0 or "install ok installed" not in status:
        raise ImageError(f"{KERNEL_PACKAGE} is not installed (make apt): "
                         f"{proc.stderr.strip() or status.strip()}")
    # Depends: "linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
    m = re.search(r"\blinux-image-(\d[^\s,(]*)", depends)
    if m is None:
        raise ImageError(f"cannot find the kernel in {KERNEL_PACKAGE}'s Depends: {depends!r}")
    return m.group(1)


def bzimage() -> Path:
    """Debian's compressed kernel image, /boot/vmlinuz-<ver>."""
    path = Path("/boot") / f"vmlinuz-{kernel_version()}"
    if not path.is_file():
        raise ImageError(f"{path} is missing: reinstall linux-image-{kernel_version()}")
    return path


def headers_dir() -> Path:
    """The kernel build tree for out-of-tree modules, /usr/src/linux-headers-<ver>."""
    ver = kernel_version()
    path = Path("/usr/src") / f"linux-headers-{ver}"
    if not (path / "Makefile").is_file():
        raise ImageError(f"{path} is missing: install linux-headers-{ver} "
                         "(linux-headers-amd64; make apt)")
    return path


# ---------------------------------------------------------------------------------------
# Caching and build helpers


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _stamp_ok(stamp: Path, key: str, outputs: list[Path]) -> bool:
    return (stamp.is_file() and stamp.read_text().strip() == key
            and all(p.is_file() for p in outputs))


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Serialise builds into one output folder (parallel test runs share build/guest)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], out: Path, what: str, cwd: Path | None = None) -> str:
    """Run one build command, append it and its output to build.log, fail with its tail."""
    log.debug("run: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                              timeout=_BUILD_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{what}: {cmd[0]} not found (make apt)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what}: timed out after {_BUILD_TIMEOUT} s: {' '.join(cmd)}") from exc
    output = proc.stdout + proc.stderr
    with open(out / "build.log", "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{output}[exit {proc.returncode}]\n\n")
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-25:])
        raise ImageError(f"{what} failed (exit {proc.returncode}; full log in "
                         f"{out / 'build.log'}):\n{tail}")
    return output


def _tool_version(tool: str) -> str:
    try:
        return subprocess.run([tool, "--version"], capture_output=True, text=True,
                              timeout=_DPKG_TIMEOUT, check=False).stdout
    except FileNotFoundError as exc:
        raise ImageError(f"{tool} not found: install build-essential (make apt)") from exc


# ---------------------------------------------------------------------------------------
# Kernel


def vmlinux(out: Path = DEFAULT_OUT) -> Path:
    """The uncompressed ELF kernel extracted from the bzImage (cached: out/vmlinux-<ver>)."""
    src = bzimage()
    ver = kernel_version()
    target = out / f"vmlinux-{ver}"
    stamp = out / f"vmlinux-{ver}.stamp"
    with _locked(out):
        data = src.read_bytes()
        key = _digest(data)
        if _stamp_ok(stamp, key, [target]):
            return target
        log.info("extracting the uncompressed kernel from %s ...", src)
        t0 = time.monotonic()
        elf = _extract_elf(data, src)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(elf)
        tmp.replace(target)
        stamp.write_text(key + "\n")
        log.info("vmlinux: %s (%d MiB, %.1f s)", target, len(elf) >> 20,
                 time.monotonic() - t0)
    return target


def _extract_elf(data: bytes, src: Path) -> bytes:
    """Decompress the xz stream of a bzImage whose content is an ELF file."""
    start = 0
    while (pos := data.find(_XZ_MAGIC, start)) >= 0:
        start = pos + 1
        try:
            # The stream ends before the bzImage does; the decompressor stops there.
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[pos:])
        except lzma.LZMAError:
            continue  # the magic bytes occurred by chance
        if elf.startswith(b"\x7fELF"):
            return elf
    raise ImageError(f"no xz-compressed ELF kernel found in {src} "
                     "(a kernel not built with CONFIG_KERNEL_XZ?)")


# ---------------------------------------------------------------------------------------
# Modules and programs


def _driver_sources() -> list[Path]:
    files = sorted(p for p in DRIVER_SRC.rglob("*")
                   if p.is_file() and (p.suffix in (".c", ".h") or p.name in ("Kbuild",
                                                                               "Makefile")))
    if not (DRIVER_SRC / "cosim_regs.h").is_file():
        raise ImageError(f"{DRIVER_SRC / 'cosim_regs.h'} is missing: "
                         "generate it with `make regmap`")
    return files


def _build_drivers(out: Path) -> Path:
    """Copy linux-driver/ to out/drivers and build the modules and programs there.

    Building in a copy keeps the source tree free of Kbuild's outputs; linux-driver's own
    Makefile holds the one definition of the compiler flags (`make modules user`).
    """
    ver = kernel_version()
    kdir = headers_dir()
    sources = _driver_sources()
    work = out / "drivers"
    key = _digest(ver, str(kdir), _tool_version("gcc"),
                  *(f"{p.relative_to(DRIVER_SRC)}\n" + p.read_text() for p in sources))
    outputs = ([work / f"{name}.ko" for name in MODULE_NAMES]
               + [work / "user" / name for name in PROGRAM_NAMES])
    stamp = work / ".cosim-stamp"
    if _stamp_ok(stamp, key, outputs):
        return work

    log.info("building modules against %s and static user programs (log: %s) ...",
             kdir, out / "build.log")
    t0 = time.monotonic()
    if work.exists():
        shutil.rmtree(work)
    for src in sources:
        dst = work / src.relative_to(DRIVER_SRC)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    output = _run(["make", "-C", str(work), f"KDIR={kdir}", f"KVER={ver}", "modules", "user"],
                  out, "building linux-driver")
    # Warnings are errors in Kbuild (-Werror) and for the programs; anything that still
    # says "warning" (e.g. from modpost) must not pass unnoticed either.
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    if warnings:
        raise ImageError("linux-driver built with warnings:\n" + "\n".join(warnings))
    for name in MODULE_NAMES:
        magic = module_vermagic(work / f"{name}.ko")
        if magic.split()[0] != ver:
            raise ImageError(f"{name}.ko has vermagic {magic!r}, the guest kernel is {ver}")
    stamp.write_text(key + "\n")
    log.info("linux-driver built in %.1f s", time.monotonic() - t0)
    return work


def module_vermagic(ko: Path) -> str:
    """The `vermagic=` string of a module's .modinfo section (what the kernel checks)."""
    m = re.search(rb"(?:^|\0)vermagic=([^\0]*)\0", ko.read_bytes())
    if m is None:
        raise ImageError(f"{ko} has no vermagic: not a kernel module")
    return m.group(1).decode()


def modules(out: Path = DEFAULT_OUT) -> dict[str, Path]:
    """Build (if needed) and return {"my_rng": .../my_rng.ko, "debugcon": .../debugcon.ko}."""
    with _locked(out):
        work = _build_drivers(out)
    return {name: work / f"{name}.ko" for name in MODULE_NAMES}


def programs(out: Path = DEFAULT_OUT) -> dict[str, Path]:
    """Build (if needed) and return {"rng_ref": ..., "misuse": ...}: static executables."""
    with _locked(out):
        work = _build_drivers(out)
    return {name: work / "user" / name for name in PROGRAM_NAMES}


def guest_module(name: str) -> str:
    """Path of one of our modules inside the guest, for `insmod`."""
    if name not in MODULE_NAMES:
        raise ValueError(f"unknown module {name!r}, expected one of {MODULE_NAMES}")
    return f"{GUEST_MODULE_DIR}/{name}.ko"


def guest_program(name: str) -> str:
    """Path of one of our user programs inside the guest."""
    if name not in PROGRAM_NAMES:
        raise ValueError(f"unknown program {name!r}, expected one of {PROGRAM_NAMES}")
    return f"{GUEST_BIN_DIR}/{name}"


def guest_rngtest() -> str:
    """Path of rngtest inside the guest (the host's path: its libraries keep theirs)."""
    return str(RNGTEST)


def rngtest_files() -> dict[str, Path]:
    """{guest path: host file} for build_initramfs' extra_files: rngtest and the shared
    libraries and loader `ldd` lists for it, each at the path ldd names (the loader
    finds the libraries in its built-in directories: there is no ld.so.cache)."""
    if not RNGTEST.is_file():
        raise ImageError(f"{RNGTEST} is missing: install rng-tools5 (make apt)")
    try:
        proc = subprocess.run(["ldd", str(RNGTEST)], capture_output=True, text=True,
                              timeout=_DPKG_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise ImageError("ldd not found: install libc-bin") from exc
    if proc.returncode != 0:
        raise ImageError(f"ldd {RNGTEST} failed: {proc.stderr.strip()}")
    files = {guest_rngtest(): RNGTEST}
    for line in proc.stdout.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux... (0x...)";
        # the vDSO ("linux-vdso.so.1 (0x...)") is the kernel's, not a file.
        m = re.match(r"\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            files[m.group(1)] = Path(m.group(1)).resolve()
        elif "=>" in line:
            raise ImageError(f"ldd {RNGTEST}: unresolved library: {line.strip()}")
    return files


# ---------------------------------------------------------------------------------------
# Initramfs

# PID 1.  The kernel runs it with /dev/console (the serial port with console=ttyS0) as
# stdin/stdout/stderr.  busybox provides every command through `--install -s` symlinks.
_INIT = f"""#!/bin/sh
# /init of the co-simulation guest, generated by qbridge.image: mounts the usual file
# systems, runs {GUEST_SCRIPT} with /bin/sh, prints its exit status and powers off.
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
# The RNG is a seeded deterministic PRNG, not an entropy source: never credit entropy
# for it (Debian's 6.1 defaults to 0 already; other kernels default to 1024).
echo 0 > /sys/module/rng_core/parameters/default_quality
echo "{BEGIN_MARKER}"
cd /
/bin/sh {GUEST_SCRIPT}
rc=$?
echo "{END_MARKER} rc=$rc"
poweroff -f
# Not reached; if it were, PID 1 exiting panics and panic=-1 -no-reboot ends QEMU.
"""

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/tmp:/bin/sh\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"

# Directories of the initramfs (busybox --install -s needs its applet dirs to exist).
_DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root",
         "etc", "lib", "lib/modules", GUEST_MODULE_DIR.lstrip("/"), "cosim")

_S_IFCHR = stat.S_IFCHR


class _Newc:
    """A writer of the cpio "newc" format the kernel unpacks as initramfs.

    Ref: Documentation/driver-api/early-userspace/buffer-format.rst.  Written here rather
    than with cpio(1) so that device nodes need no root and the archive is reproducible
    (fixed inode numbers, owner root, mtime 0).
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 1
        self._names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        name = name.lstrip("/")
        if name in self._names:
            raise ImageError(f"initramfs: {name!r} added twice")
        self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._chunks += [header, encoded, _pad(len(header) + len(encoded)), data,
                         _pad(len(data))]

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, perm: int, major: int, minor: int) -> None:
        self._entry(name, _S_IFCHR | perm, rdev=(major, minor))

    def __contains__(self, name: str) -> bool:
        return name.lstrip("/") in self._names

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        return b"".join(self._chunks)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def build_initramfs(script: str, out: Path,
                    extra_files: Mapping[str, Path | bytes] | None = None,
                    build_dir: Path = DEFAULT_OUT) -> Path:
    """Write a newc initramfs to `out` whose /init runs `script` with /bin/sh.

    The archive holds busybox (/bin/busybox, /bin/sh), our modules in GUEST_MODULE_DIR,
    our programs in GUEST_BIN_DIR, /dev/console, the script as GUEST_SCRIPT, and
    `extra_files` ({guest path: host file or content}; host files keep their permission
    bits, content starting with "#!" is executable).  /init prints BEGIN_MARKER, runs the
    script, prints ``COSIM-END rc=<status>`` and powers off.
    """
    if not BUSYBOX.is_file():
        raise ImageError(f"{BUSYBOX} is missing: install busybox-static (make apt)")
    mods = modules(build_dir)
    progs = programs(build_dir)

    cpio = _Newc()
    for d in _DIRS:
        cpio.directory(d)
    # The kernel opens /dev/console for init's stdio before anything is mounted.
    cpio.char_device("dev/console", 0o600, 5, 1)
    cpio.file("init", _INIT.encode(), 0o755)
    # Accounts, so a script can check what an unprivileged user may do (`su nobody`).
    cpio.file("etc/passwd", _PASSWD.encode(), 0o644)
    cpio.file("etc/group", _GROUP.encode(), 0o644)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    for name, path in mods.items():
        cpio.file(guest_module(name), path.read_bytes(), 0o644)
    for name, path in progs.items():
        cpio.file(guest_program(name), path.read_bytes(), 0o755)
    cpio.file(GUEST_SCRIPT, script.encode(), 0o755)

    for guest_path, content in (extra_files or {}).items():
        if not guest_path.startswith("/"):
            raise ValueError(f"extra file {guest_path!r}: guest paths must be absolute")
        parent = os.path.dirname(guest_path.lstrip("/"))
        parts = parent.split("/") if parent else []
        for i in range(len(parts)):
            sub = "/".join(parts[: i + 1])
            if sub not in cpio:
                cpio.directory(sub)
        if isinstance(content, Path):
            cpio.file(guest_path, content.read_bytes(), content.stat().st_mode & 0o777)
        else:
            cpio.file(guest_path, content, 0o755 if content.startswith(b"#!") else 0o644)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # concurrent builders never mix
    tmp.write_bytes(cpio.finish())
    tmp.replace(out)
    log.info("initramfs: %s (%d KiB)", out, out.stat().st_size >> 10)
    return out


# ---------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m qbridge.image",
        description="Build the guest kernel (vmlinux), modules, programs and an initramfs.")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="build folder (cache)")
    p.add_argument("--script", type=Path,
                   help="shell script for the guest's /init to run (default: an initramfs "
                        "that loads both modules and lists them)")
    p.add_argument("--initramfs", type=Path, help="where to write it (default OUT/initramfs.cpio)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(name)s: %(message)s")
    out: Path = args.out.resolve()
    try:
        ver = kernel_version()
        log.info("guest kernel %s: %s, headers %s", ver, bzimage(), headers_dir())
        kernel = vmlinux(out)
        mods = modules(out)
        progs = programs(out)
        if args.script is not None:
            script = args.script.read_text()
        else:
            script = "".join(f"insmod {guest_module(n)}\n" for n in MODULE_NAMES) + "lsmod\n"
        initrd = build_initramfs(script, args.initramfs or out / "initramfs.cpio",
                                 build_dir=out)
    except (ImageError, OSError) as exc:
        log.error("%s", exc)
        return 1
    print(f"kernel    {kernel}")
    for name, path in {**mods, **progs}.items():
        print(f"{name:<9} {path}")
    print(f"initramfs {initrd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
