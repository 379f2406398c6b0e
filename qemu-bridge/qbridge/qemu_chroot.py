"""QEMU 11.1 for vfio-user: a private Debian 13 userland under build/, built and checked.

    python -m qbridge.qemu_chroot [--dir DIR] [--check] [--mirror URL]

vfio-user's client (`-device vfio-user-pci`) is in QEMU >= 10.1; Debian ships it in
trixie-backports.  That QEMU links against Debian 13's libc (>= 2.38; Debian 12 has 2.36),
so it cannot be installed on the host: it runs from a debootstrapped trixie userland
(`chroot DIR qemu-system-x86_64 ...`), unpatched, exactly as Debian built it.

The userland is built once (debootstrap --variant=minbase, then QEMU pinned to
QEMU_VERSION from trixie-backports; ~350 MB, 35-90 s), in a temporary folder that is renamed
into place only when QEMU in it answers `--version` and lists `vfio-user-pci`; the last
step writes a stamp naming package, version and suite and the binary's size.  `problem()`
checks the stamp and the binary (cheap: the launcher asks it before every run);
`ensure()` also runs QEMU and rebuilds anything half-built, corrupted or of another
version.  One build at a time (a lock file beside DIR); the Debian mirror is the host's
own (its apt sources), so a machine behind a local mirror uses it.  docs/qemu-11.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from models.contract.layout import qemu_chroot_dir

__all__ = [
    "QEMU_BINARY",
    "QEMU_PACKAGE",
    "QEMU_VERSION",
    "SUITE",
    "ChrootError",
    "ensure",
    "host_mirror",
    "problem",
]

log = logging.getLogger("cosim.qemu_chroot")

QEMU_PACKAGE = "qemu-system-x86"
# The version the sign-off is tested with; a newer backport is a deliberate change here.
QEMU_VERSION = "1:11.1.3+ds-2~bpo13+1"
SUITE = "trixie"
BACKPORTS = f"{SUITE}-backports"
QEMU_BINARY = "usr/bin/qemu-system-x86_64"
STAMP = ".cosim-chroot.json"
# Only when the host's apt sources name no Debian archive (a container without sources).
FALLBACK_MIRROR = "http://deb.debian.org/debian"

# Per step, generous: debootstrap fetches ~100 packages, QEMU ~60 more.
STEP_TIMEOUT_S = {"debootstrap": 900.0, "apt-get update": 300.0, "install": 900.0,
                  "verify": 60.0}
LOCK_TIMEOUT_S = 1800.0  # another build of the same folder, at most every step's timeout
HEARTBEAT_S = 10.0


class ChrootError(Exception):
    """The userland cannot be built or used; the message is one line for the user."""


# -- the host's Debian mirror ---------------------------------------------------------------

_ARCHIVE_SUITE = re.compile(r"^[a-z]+(-updates|-backports)?$")  # not -security


def host_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The first Debian archive the host's apt sources name (one-line `sources.list` and
    deb822 `*.sources` both), skipping security archives: their layout has no trixie
    release of the main archive."""
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list")),
             *sorted((etc / "sources.list.d").glob("*.sources"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        uris = _deb822_uris(text) if f.suffix == ".sources" else _one_line_uris(text)
        for uri in uris:
            return uri.rstrip("/")
    return FALLBACK_MIRROR


def _one_line_uris(text: str) -> list[str]:
    uris = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and _ARCHIVE_SUITE.match(words[2]):
            uris.append(words[1])
    return uris


def _deb822_uris(text: str) -> list[str]:
    uris = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        suites = fields.get("suites", "").split()
        if suites and all(_ARCHIVE_SUITE.match(s) for s in suites):
            uris.extend(fields.get("uris", "").split())
    return uris


# -- checking -------------------------------------------------------------------------------

def _wanted() -> dict[str, str]:
    return {"package": QEMU_PACKAGE, "version": QEMU_VERSION, "suite": SUITE}


def problem(root: Path) -> str | None:
    """Why the userland at `root` cannot run the pinned QEMU; None when it can.  Cheap (no
    process started): a missing stamp means a build that never finished."""
    root = Path(root)
    if not root.is_dir():
        return "not built"
    try:
        stamp = json.loads((root / STAMP).read_text())
    except FileNotFoundError:
        return f"half-built (no {STAMP})"
    except (OSError, ValueError) as exc:
        return f"its {STAMP} is unreadable ({exc})"
    if not isinstance(stamp, dict):
        return f"its {STAMP} is not an object"
    for key, want in _wanted().items():
        if stamp.get(key) != want:
            return f"built with {key} {stamp.get(key)!r}, the project pins {want!r}"
    binary = root / QEMU_BINARY
    try:
        size = binary.stat().st_size
    except OSError:
        return f"{QEMU_BINARY} is missing"
    if not os.access(binary, os.X_OK):
        return f"{QEMU_BINARY} is not executable"
    if size != stamp.get("binary_size"):
        return f"{QEMU_BINARY} is {size} bytes, {stamp.get('binary_size')} when built"
    return None


def verify(root: Path) -> str:
    """Run the QEMU of `root`: its version line, or ChrootError when it does not run, is
    not the pinned version or lacks the vfio-user client."""
    version = _capture(root, ["--version"])
    upstream = QEMU_VERSION.split(":", 1)[-1].split("+", 1)[0]
    if f"version {upstream}" not in version:
        raise ChrootError(f"QEMU in {root} says {version.splitlines()[0]!r}, "
                          f"expected version {upstream}")
    if '"vfio-user-pci"' not in _capture(root, ["-device", "help"]):
        raise ChrootError(f"QEMU in {root} has no vfio-user-pci device")
    return version.splitlines()[0]


def _capture(root: Path, args: list[str]) -> str:
    try:
        p = subprocess.run(["chroot", str(root), "/" + QEMU_BINARY, *args],
                           capture_output=True, text=True,
                           timeout=STEP_TIMEOUT_S["verify"], check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ChrootError(f"QEMU in {root} did not run: {exc}") from None
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise ChrootError(f"QEMU in {root} {' '.join(args)} failed ({p.returncode}): {tail}")
    return p.stdout


# -- building -------------------------------------------------------------------------------

Builder = Callable[[Path, str, Path], None]  # (folder to fill, mirror, log file)
Verifier = Callable[[Path], str]


def ensure(root: Path | None = None, mirror: str | None = None,
           builder: Builder | None = None, verifier: Verifier = verify) -> str:
    """Make `root` hold a working pinned QEMU; return its version line.  Quick (one
    `--version`) when it already does; otherwise (re)build it, under a lock."""
    root = Path(root or qemu_chroot_dir()).absolute()
    build = builder or _debootstrap
    if problem(root) is None:
        try:
            return verifier(root)
        except ChrootError as exc:
            log.warning("rebuilding: %s", exc)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _Lock(root.with_name(root.name + ".lock")):
        # Another process may have finished the build while we waited.
        if problem(root) is None:
            try:
                return verifier(root)
            except ChrootError as exc:
                log.warning("rebuilding: %s", exc)
        else:
            log.info("%s: %s, building it", root, problem(root))
        for stale in root.parent.glob(root.name + ".tmp-*"):
            _remove(stale)  # a build killed half-way; we hold the lock, so none is live
        tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
        logfile = root.with_name(root.name + ".log")
        mirror = mirror or host_mirror()
        t0 = time.monotonic()
        try:
            build(tmp, mirror, logfile)
            size = (tmp / QEMU_BINARY).stat().st_size
            version = verifier(tmp)
            stamp = {**_wanted(), "binary_size": size, "mirror": mirror,
                     "qemu": version}
            (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
            if root.exists():
                _remove(root)
            tmp.rename(root)
        except BaseException:
            _remove(tmp)
            raise
        log.info("%s ready in %.0f s: %s (log %s)", root, time.monotonic() - t0,
                 version, logfile)
        return version


def _debootstrap(tmp: Path, mirror: str, logfile: Path) -> None:
    """debootstrap minbase trixie, then the pinned QEMU from trixie-backports."""
    if os.geteuid() != 0:
        raise ChrootError("building the QEMU 11.1 userland needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        raise ChrootError("debootstrap is not installed (make setup installs it)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    with open(logfile, "w") as out:
        _step("debootstrap", ["debootstrap", "--variant=minbase", SUITE, str(tmp), mirror],
              out, logfile, env)
        (tmp / "etc/apt/sources.list.d/backports.list").write_text(
            f"deb {mirror} {BACKPORTS} main\n")
        _step("apt-get update", ["chroot", str(tmp), "apt-get", "update"], out, logfile, env)
        _step("install", ["chroot", str(tmp), "apt-get", "install", "-y",
                          "--no-install-recommends", "-t", BACKPORTS,
                          f"{QEMU_PACKAGE}={QEMU_VERSION}"], out, logfile, env)
        _step("apt-get clean", ["chroot", str(tmp), "apt-get", "clean"], out, logfile, env)


def _step(name: str, argv: list[str], out: IO[str], logfile: Path, env: dict[str, str]) -> None:
    """Run one build step in its own process group, its output into the log, a progress
    line every HEARTBEAT_S, killed (group and all) after its timeout."""
    timeout = STEP_TIMEOUT_S.get(name, 300.0)
    log.info("%s ... (log %s)", name, logfile)
    out.write(f"\n$ {' '.join(argv)}\n")
    out.flush()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    try:
        while True:
            try:
                rc = proc.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - t0
                if elapsed > timeout:
                    raise ChrootError(
                        f"{name} took more than {timeout:.0f} s; see {logfile}") from None
                log.info("%s ... %.0f s", name, elapsed)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    if rc != 0:
        raise ChrootError(f"{name} failed (exit {rc}): {_last_line(logfile)}; see {logfile}")
    log.info("%s done in %.0f s", name, time.monotonic() - t0)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _last_line(logfile: Path) -> str:
    try:
        lines = [ln for ln in logfile.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` (debootstrap mounts /proc and /sys in its target and
    leaves them behind when it is killed)."""
    prefix = str(path.resolve())
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def _remove(path: Path) -> None:
    """Delete a userland folder, never through a mount: a left-over /proc or bind mount
    inside it is unmounted first, and if that fails nothing is deleted."""
    if not path.exists() and not path.is_symlink():
        return
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False,
                       timeout=30)
    left = _mounts_under(path)
    if left:
        raise ChrootError(f"refusing to delete {path}: still mounted at {', '.join(left)}")
    shutil.rmtree(path)


class _Lock:
    """An exclusive flock on a file beside the userland, so concurrent `make` targets build
    it once; a waiter says which process it waits for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        told = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise ChrootError(f"{self.path} is still held after "
                                      f"{LOCK_TIMEOUT_S:.0f} s") from None
                if not told:
                    holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
                    log.info("waiting for the build of process %s (%s)", holder or "?",
                             self.path)
                    told = True
                time.sleep(0.2)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the flock


# -- command line ---------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qbridge.qemu_chroot",
                                description=__doc__.split("\n\n")[1])
    p.add_argument("--dir", type=Path, default=qemu_chroot_dir(),
                   help="the userland folder (default: %(default)s)")
    p.add_argument("--check", action="store_true",
                   help="only say whether it is ready (exit 0) or not (exit 1)")
    p.add_argument("--mirror", help="Debian mirror URL (default: the host's apt sources)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="qemu11: %(message)s")
    if args.dir.exists() and not args.dir.is_dir():
        p.error(f"--dir {args.dir} is not a folder")
    if args.check:
        reason = problem(args.dir)
        print(f"qemu11: {args.dir}: {reason or 'ready'}")
        return 1 if reason else 0
    try:
        version = ensure(args.dir, args.mirror)
    except (ChrootError, OSError) as exc:
        print(f"qemu11: cannot set up QEMU 11.1 in {args.dir}: {exc}", file=sys.stderr)
        return 1
    print(f"qemu11: {args.dir}: {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
