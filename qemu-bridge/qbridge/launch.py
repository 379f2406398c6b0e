"""Launch one co-simulated VM run: the device server and stock QEMU, supervised.

`launch(LaunchConfig(...)) -> RunResult` starts `python -m qbridge.server` (model backend,
or the RTL backend inside a simulator) and stock QEMU with our device attached through one
of two transports, plus `isa-debugcon`, streams the guest's serial console, and watches
every component until the guest's init prints its end marker and QEMU powers off.

Transports (`LaunchConfig.transport`):
- `proxy`: Debian 12's QEMU 7.2 on the host, `x-pci-proxy-dev`.  QEMU takes the connection
  as an inherited fd (`x-pci-proxy-dev,fd=N`).  The model server gets the other end of a
  socketpair; the RTL server runs inside a simulator we cannot hand an fd to, so it
  listens on a path, we connect, and QEMU gets our end.
- `vfio-user`: Debian 13's QEMU 11.1 (trixie-backports), run with `chroot` from the
  project's private userland (qbridge.qemu_chroot).  QEMU is the client and connects to
  the server's socket itself; guest RAM is a shared memfd, so DMA maps carry its fd.  Every
  file QEMU opens (kernel, initrd, sockets) is in a run folder under the chroot's /tmp.

Ref: docs/bridge-protocol.md and docs/measured-facts.md (measured QEMU facts):
- QEMU connects to the server's debugcon socket as a chardev client, so the server must
  listen first: we start QEMU only after the server's --ready-file exists.
- If the server dies QEMU keeps running (reads give all-ones, writes "Broken pipe"), and
  there is no timeout in QEMU: only this supervisor can notice and fail the run.

Failure policy: any component failing (server exit while QEMU runs, QEMU exit before the
end marker, `Kernel panic` on the serial console, a phase timeout) stops everything we
started -- each child is in its own process group, SIGTERM then SIGKILL -- keeps the
artifacts in the output folder and names the failed component in `RunResult.failed`.

    python -m qbridge.launch --kernel K --initrd I --out out/run [--backend rtl --sim S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TextIO

from models.contract.layout import REPO, bridge_sim_root, qemu_chroot_dir
from qbridge import image
from qbridge.childenv import child_env
from qbridge.config import TRANSPORTS
from qbridge.record import append_markers

__all__ = [
    "BEGIN_MARKER",
    "DEFAULT_APPEND",
    "END_MARKER",
    "Component",
    "LaunchConfig",
    "LaunchError",
    "RunResult",
    "Timeouts",
    "launch",
    "main",
    "qemu_command",
    "stop_on_sigterm",
]

log = logging.getLogger("cosim.launch")


# no_timer_check: under TCG on a loaded host the kernel's boot-time check that the
# IO-APIC timer ticks can miss its window and panic ("IO-APIC + timer doesn't work!"; seen
# by `make robustness`); it is a check of real interrupt wiring, which an emulated PC has.
DEFAULT_APPEND = "console=ttyS0 quiet panic=-1 no_timer_check"
# Printed by the guest image's /init (qbridge.image): BEGIN when user space starts, END
# with the run script's exit status before it powers off.
BEGIN_MARKER = image.BEGIN_MARKER
END_MARKER = re.compile(re.escape(image.END_MARKER) + r" rc=(-?\d+)")
# "Kernel panic - not syncing: ..." -- with panic=-1 the kernel then reboots at once and
# -no-reboot turns that into a QEMU exit, so we see the line just before QEMU goes away.
PANIC = re.compile(r"Kernel panic")
# SYNC_SYSMEM with default (non-shared) RAM carries fd -1; QEMU's sendmsg fails and logs
# this on every memory map change.  Harmless (docs/measured-facts.md), so it is counted, not shown.
QEMU_NOISE = ("Unable to write to socket: Bad file descriptor",)
# SeaBIOS clears the screen and sets modes with ANSI sequences on the serial console.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc")

_NOISE = "\0noise"  # what a reader thread queues instead of a filtered line (it is counted)
_TERM_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
_POLL = 0.05  # supervisor tick


class Component(StrEnum):
    """Who failed a run."""

    SERVER = "device server"
    QEMU = "QEMU"
    GUEST = "guest"
    LAUNCHER = "launcher"


class LaunchError(Exception):
    """A component failed; `component` says which."""

    def __init__(self, component: Component, message: str) -> None:
        super().__init__(f"{component}: {message}")
        self.component = component
        self.message = message


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed for each phase.  The RTL server's ready time includes its build."""

    server_ready: float = 60.0
    first_output: float = 60.0  # QEMU start -> first line on the serial console (firmware)
    boot: float = 120.0  # QEMU start -> the guest's /init prints BEGIN_MARKER (kernel boot)
    run: float = 300.0  # launch start -> QEMU exit
    server_exit: float = 30.0  # QEMU exit -> server exit (RTL: simulator wind-down, waves)


@dataclass
class LaunchConfig:
    kernel: Path
    initrd: Path
    out: Path
    backend: str = "model"  # "model" | "rtl"
    transport: str = TRANSPORTS[0]  # "proxy" (host QEMU 7.2) | "vfio-user" (QEMU 11.1)
    sim: str = "icarus"  # RTL backend only: "icarus" | "verilator"
    waves: bool = False
    accel: str = "tcg"  # "tcg" | "kvm" (KVM cannot boot Linux on the nested test hosts)
    cpu: str | None = None  # QEMU -cpu; default: QEMU's for TCG, "host" for KVM
    pin: int | None = None  # run QEMU and the server on this one CPU (2.5x faster MMIO)
    memory: str = "256M"
    append: str = DEFAULT_APPEND
    timeouts: Timeouts = field(default_factory=Timeouts)
    progress: TextIO | None = None  # where serial lines are echoed with elapsed time
    qemu: str = "qemu-system-x86_64"
    # vfio-user: the Debian 13 userland QEMU 11.1 runs in (default: qbridge.qemu_chroot's).
    qemu_root: Path | None = None
    server_module: str = "qbridge.server"  # tests substitute a deliberately broken server
    wait_for_begin: bool = True  # the initrd is qbridge.image's: apply Timeouts.boot
    extra_qemu_args: Sequence[str] = ()
    record: Path | None = None  # the server records what the device saw (qbridge.record)

    def __post_init__(self) -> None:
        if self.backend not in ("model", "rtl"):
            raise ValueError(f"Backend must be 'model' or 'rtl', not {self.backend!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"Transport must be one of {', '.join(TRANSPORTS)}, "
                             f"not {self.transport!r}")
        if self.transport == "vfio-user" and self.qemu_root is None:
            self.qemu_root = qemu_chroot_dir()
        if self.sim not in ("icarus", "verilator"):
            raise ValueError(f"Simulator must be 'icarus' or 'verilator', not {self.sim!r}")
        if self.accel not in ("tcg", "kvm"):
            raise ValueError(f"Accelerator must be 'tcg' or 'kvm', not {self.accel!r}")
        if self.pin is not None and self.pin not in os.sched_getaffinity(0):
            raise ValueError(f"CPU {self.pin} is not available to this process")
        for what, path in (("kernel", self.kernel), ("initrd", self.initrd)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"The {what} {path} does not exist")


@dataclass
class RunResult:
    """What a run produced.  `ok` means every component behaved and the guest script
    exited 0; `failed`/`reason` say why not."""

    ok: bool
    guest_rc: int | None
    failed: Component | None
    reason: str
    serial: str
    elapsed: float
    out: Path
    serial_log: Path
    capture: Path
    server_log: Path
    server_stderr: Path
    qemu_log: Path
    txlog: Path
    waves: list[Path] = field(default_factory=list)
    server_rc: int | None = None
    qemu_rc: int | None = None
    qemu_started: float | None = None  # seconds from launch start to QEMU's start (bench/)
    transport: str = TRANSPORTS[0]
    backend: str = "model"
    sim: str = ""  # the RTL backend's simulator
    qemu_version: str = ""  # QEMU's own `--version` line

    @property
    def rc(self) -> int:
        """Process exit status for the CLI: 0 only for a clean run."""
        return 0 if self.ok else 1

    @property
    def serial_lines(self) -> list[str]:
        return self.serial.splitlines()


def qemu_prefix(cfg: LaunchConfig) -> list[str]:
    """How QEMU is started: the host's, or the one in the vfio-user chroot."""
    if cfg.qemu_root is not None:
        return ["chroot", str(cfg.qemu_root), cfg.qemu]
    return [cfg.qemu]


def qemu_command(
    cfg: LaunchConfig, device: int | str, debugcon_sock: Path | str,
    kernel: Path | str | None = None, initrd: Path | str | None = None,
) -> list[str]:
    """The QEMU command line, stock devices only (docs/measured-facts.md, 'Launching').

    `device`: the proxy connection's fd (x-pci-proxy-dev) or, for vfio-user, the server's
    socket path as QEMU sees it.  Paths default to the configuration's (a chrooted QEMU is
    given paths inside its root)."""
    cmd = [
        *qemu_prefix(cfg),
        "-accel", cfg.accel,
        "-m", cfg.memory,
        "-nographic",
        "-no-reboot",  # a guest reboot or panic (panic=-1) ends QEMU instead of looping
        "-nic", "none",  # no default e1000: no iPXE ROM on the console, one device fewer
        "-kernel", str(kernel or cfg.kernel),
        "-initrd", str(initrd or cfg.initrd),
        "-append", cfg.append,
    ]
    # Guest RAM as a shared memfd: QEMU then passes its fd with every DMA_MAP (vfio-user)
    # or SYNC_SYSMEM (x-pci-proxy-dev, which sends fd -1 for plain RAM), and the device's
    # DMA reaches guest memory directly (docs/bridge-protocol.md).
    cmd += [
        "-object", f"memory-backend-memfd,id=ram,size={cfg.memory},share=on",
        "-machine", "memory-backend=ram",
    ]
    if cfg.transport == "vfio-user":
        cmd += [
            "-device", json.dumps({"driver": "vfio-user-pci", "id": "rng0",
                                   "socket": {"type": "unix", "path": str(device)}}),
        ]
    else:
        cmd += ["-device", f"x-pci-proxy-dev,id=rng0,fd={device}"]
    cmd += [
        "-chardev", f"socket,id=dbg,path={debugcon_sock}",
        "-device", "isa-debugcon,iobase=0xe9,chardev=dbg",
    ]
    cpu = cfg.cpu or ("host,-arch-capabilities" if cfg.accel == "kvm" else None)
    if cpu:
        cmd += ["-cpu", cpu]
    cmd += list(cfg.extra_qemu_args)
    return cmd


def qemu_version(cfg: LaunchConfig) -> str:
    """QEMU's first `--version` line ("QEMU emulator version ..."), or why there is none."""
    try:
        out = subprocess.run([*qemu_prefix(cfg), "--version"], capture_output=True,
                             text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (out.stdout or out.stderr).splitlines()
    return lines[0].strip() if lines else f"unknown (exit status {out.returncode})"


def _server_command(cfg: LaunchConfig, conn: str, rundir: Path, res: RunResult) -> list[str]:
    cmd = [sys.executable, "-m", cfg.server_module, "--backend", cfg.backend,
           "--transport", cfg.transport]
    if cfg.backend == "rtl":
        cmd += ["--sim", cfg.sim, "--waves", "1" if cfg.waves else "0"]
    if cfg.backend == "rtl" or cfg.transport == "vfio-user":
        cmd += ["--transport-listen", conn]
    else:
        cmd += ["--transport-fd", conn]
    cmd += [
        "--debugcon-listen", str(rundir / "debugcon.sock"),
        "--capture", str(res.capture),
        "--txlog", str(res.txlog),
        *(["--record", str(Path(cfg.record).resolve())] if cfg.record is not None else []),
        "--log", str(res.server_log),
        "--ready-file", str(rundir / "server.ready"),
    ]
    return cmd


def _wrapped(cfg: LaunchConfig, cmd: list[str]) -> list[str]:
    """Prefix a child's command with util-linux tools (essential in Debian), which set up
    the process and exec it, so the pid stays the child's:
    - setpriv --pdeathsig KILL: the child dies with the launcher even if the launcher is
      SIGKILLed and cannot clean up (an orphaned QEMU would wait on a dead server forever);
    - taskset: pins it before it runs, so every thread and child (QEMU's vCPU thread, the
      simulator under the server) inherits the CPU.
    """
    prefix: list[str] = []
    if shutil.which("setpriv"):
        prefix += ["setpriv", "--pdeathsig", "KILL", "--"]
    if cfg.pin is not None:
        prefix += ["taskset", "--cpu-list", str(cfg.pin)]
    return [*prefix, *cmd]


class _Child:
    """A subprocess in its own process group, stopped as a group."""

    def __init__(self, name: Component, cmd: list[str], **kwargs: object) -> None:
        self.name = name
        log.debug("starting %s: %s", name, " ".join(cmd))
        self.proc = subprocess.Popen(  # an argument list, never a shell
            cmd, start_new_session=True, stdin=subprocess.DEVNULL, **kwargs  # type: ignore[arg-type]
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        """SIGTERM the whole group, SIGKILL whatever is left after a grace period."""
        for sig, wait in ((signal.SIGTERM, _TERM_GRACE), (signal.SIGKILL, _TERM_GRACE)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
                if sig == signal.SIGTERM:
                    os.killpg(self.proc.pid, signal.SIGCONT)  # a stopped process cannot die
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.proc.poll() is not None and not _group_alive(self.proc.pid):
                    return
                time.sleep(_POLL)
        log.error("%s (process group %d) survived SIGKILL", self.name, self.proc.pid)


def _group_states(pgid: int) -> set[str]:
    """The states (R, S, T, Z...) of the processes in process group `pgid`."""
    states = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            states.add(fields[0])
    return states


def _group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` still exists (zombies excluded)."""
    return bool(_group_states(pgid) - {"Z"})


def _pump_lines(
    stream: TextIO, sink: TextIO | None, out: queue.Queue[str | None], noise: tuple[str, ...]
) -> None:
    """Reader thread: every line of `stream` goes to `sink` (a log file) and `out`."""
    for raw in stream:
        line = _ANSI.sub("", raw.rstrip("\r\n")).replace("\r", "")
        if any(n in line for n in noise):
            out.put(_NOISE)
            continue
        if sink is not None:
            sink.write(line + "\n")
            sink.flush()
        out.put(line)
    out.put(None)


def _drain(q: queue.Queue[str | None]) -> Iterator[str | None]:
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


def _how(rc: int | None) -> str:
    if rc is not None and rc < 0:
        return f"killed by signal {signal.Signals(-rc).name}"
    return f"exited with status {rc}"


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _link_into(folder: Path, path: Path) -> Path:
    """`path` in `folder`, as a hard link where it can be (no copy of a 40 MB kernel)."""
    dest = folder / Path(path).name
    try:
        os.link(path, dest)
    except OSError:
        shutil.copyfile(path, dest)
    return dest


class _Run:
    """One supervised run: start_server(), start_qemu(), supervise() -- each raises
    LaunchError naming the failed component -- and close(), always."""

    def __init__(self, cfg: LaunchConfig, res: RunResult, t0: float) -> None:
        self.cfg = cfg
        self.res = res
        self.t0 = t0
        # Mode 0700 by contract.  A chrooted QEMU sees only its root: the run folder (its
        # sockets, the guest's kernel and initrd) is then under the root's /tmp.
        tmp = cfg.qemu_root / "tmp" if cfg.qemu_root is not None else None
        self.rundir = Path(tempfile.mkdtemp(prefix="cosim-run-", dir=tmp))
        self.children: list[_Child] = []
        self.fds: list[socket.socket] = []
        self.serial: list[str] = []
        self.serial_times: list[float] = []  # time.time() each line arrived (--record)
        self.serial_q: queue.Queue[str | None] = queue.Queue()
        self.qemu_err_q: queue.Queue[str | None] = queue.Queue()
        self.noise = 0
        self.threads: list[threading.Thread] = []
        self.files: list[TextIO] = []
        self.panic_at: float | None = None
        self.begun = False
        self.server: _Child | None = None
        self.qemu: _Child | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _echo(self, line: str) -> None:
        if self.cfg.progress is not None:
            self.cfg.progress.write(f"[{self.elapsed():6.1f}s] {line}\n")
            self.cfg.progress.flush()

    def qemu_path(self, path: Path) -> str:
        """`path` (in the run folder) as QEMU sees it."""
        root = self.cfg.qemu_root
        return str(path if root is None else Path("/") / path.relative_to(root))

    # Phase 1: the device server, until its sockets listen.
    def start_server(self) -> socket.socket | None:
        """Start the server; the connection to hand QEMU (None: QEMU connects itself)."""
        cfg, res = self.cfg, self.res
        env = child_env()
        stderr = open(res.server_stderr, "w")  # closed in close()
        self.files.append(stderr)
        if cfg.backend == "model" and cfg.transport == "proxy":
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.fds += [ours, theirs]
            cmd = _server_command(cfg, str(theirs.fileno()), self.rundir, res)
            self.server = _Child(
                Component.SERVER, _wrapped(cfg, cmd), pass_fds=(theirs.fileno(),), env=env,
                stdout=stderr, stderr=stderr, cwd=REPO,
            )
            # Only the server may hold its end: when it dies QEMU's end must see it.
            theirs.close()
        else:
            cmd = _server_command(cfg, str(self.rundir / "device.sock"), self.rundir, res)
            self.server = _Child(
                Component.SERVER, _wrapped(cfg, cmd), env=env, stdout=stderr, stderr=stderr,
                cwd=REPO,
            )
        self.children.append(self.server)
        ready = self.rundir / "server.ready"
        deadline = time.monotonic() + cfg.timeouts.server_ready
        while not ready.exists():
            rc = self.server.poll()
            if rc is not None:
                self.res.server_rc = rc
                raise LaunchError(
                    Component.SERVER,
                    f"exited with status {rc} before it was ready: "
                    f"{_last_line(res.server_stderr) or 'no output'}",
                )
            if time.monotonic() > deadline:
                raise LaunchError(
                    Component.SERVER, f"not ready after {cfg.timeouts.server_ready:.0f} s"
                )
            time.sleep(_POLL)
        log.info("device server ready after %.1f s", self.elapsed())
        if cfg.transport == "vfio-user":
            return None
        if cfg.backend == "model":
            return ours
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.fds.append(conn)
        conn.settimeout(10.0)
        try:
            conn.connect(str(self.rundir / "device.sock"))
        except OSError as exc:
            raise LaunchError(Component.SERVER, f"cannot connect to its proxy socket: {exc}") \
                from exc
        conn.settimeout(None)
        return conn

    # Phase 2: QEMU, with the console pumped by reader threads.
    def start_qemu(self, proxy: socket.socket | None) -> None:
        cfg = self.cfg
        debugcon = self.qemu_path(self.rundir / "debugcon.sock")
        if proxy is not None:
            cmd = qemu_command(cfg, proxy.fileno(), debugcon)
            pass_fds: tuple[int, ...] = (proxy.fileno(),)
        else:
            guest = [_link_into(self.rundir, f) for f in (cfg.kernel, cfg.initrd)]
            cmd = qemu_command(cfg, self.qemu_path(self.rundir / "device.sock"), debugcon,
                               *(self.qemu_path(f) for f in guest))
            pass_fds = ()
        self.res.qemu_started = self.elapsed()
        self.qemu = _Child(
            Component.QEMU, _wrapped(cfg, cmd), pass_fds=pass_fds, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1,
        )
        self.children.insert(0, self.qemu)  # stopped first, so the server sees the close
        if proxy is not None:
            proxy.close()  # QEMU holds the only copy now: its death must close it
        serial_log = open(self.res.serial_log, "w")  # closed in close()
        qemu_log = open(self.res.qemu_log, "w")
        self.files += [serial_log, qemu_log]
        assert self.qemu.proc.stdout is not None and self.qemu.proc.stderr is not None
        for stream, sink, q in (
            (self.qemu.proc.stdout, serial_log, self.serial_q),
            (self.qemu.proc.stderr, qemu_log, self.qemu_err_q),
        ):
            t = threading.Thread(target=_pump_lines, args=(stream, sink, q, QEMU_NOISE),
                                 daemon=True)
            t.start()
            self.threads.append(t)

    def _take_output(self) -> bool:
        """Consume pending console lines; True once the serial stream has ended."""
        ended = False
        for line in _drain(self.serial_q):
            if line is None:
                ended = True
            elif line == _NOISE:
                self.noise += 1
            else:
                self.serial.append(line)
                self.serial_times.append(time.time())
                self._echo(line)
                if BEGIN_MARKER in line:
                    self.begun = True
                if self.panic_at is None and PANIC.search(line):
                    self.panic_at = time.monotonic()
        for line in _drain(self.qemu_err_q):
            if line == _NOISE:
                self.noise += 1
        return ended

    def end_marker(self) -> int | None:
        for line in reversed(self.serial):
            m = END_MARKER.search(line)
            if m:
                return int(m.group(1))
        return None

    # Phase 3: supervise until QEMU exits, then let the server wind down.
    def supervise(self) -> None:
        cfg = self.cfg
        assert self.qemu is not None and self.server is not None
        qemu_start = time.monotonic()
        run_deadline = self.t0 + cfg.timeouts.run
        server_gone_at: float | None = None
        while True:
            self._take_output()
            now = time.monotonic()
            qrc = self.qemu.poll()
            if qrc is not None:
                self.res.qemu_rc = qrc
                break
            if self.panic_at is not None and now - self.panic_at > 2.0:
                # panic=-1 + -no-reboot should end QEMU at once; do not wait for it.
                raise LaunchError(Component.GUEST, "kernel panic (QEMU did not exit after it)")
            src = self.server.poll()
            if src is not None:
                self.res.server_rc = src
                # Exit 0 is the server's answer to QEMU closing the connection, which can be
                # seen just before QEMU's own exit: allow a moment for that.
                if src != 0:
                    raise LaunchError(Component.SERVER, self._server_death(src))
                server_gone_at = server_gone_at or now
                if now - server_gone_at > 3.0:
                    raise LaunchError(Component.SERVER, self._server_death(src))
            last = repr(self.serial[-1]) if self.serial else "none"
            if not self.serial and now - qemu_start > cfg.timeouts.first_output:
                raise self._timeout(
                    Component.QEMU,
                    f"no serial output {cfg.timeouts.first_output:.0f} s after QEMU started",
                )
            if (cfg.wait_for_begin and not self.begun
                    and now - qemu_start > cfg.timeouts.boot):
                raise self._timeout(
                    Component.GUEST,
                    f"the kernel did not reach /init ({BEGIN_MARKER}) within "
                    f"{cfg.timeouts.boot:.0f} s (last serial line: {last})",
                )
            if now > run_deadline:
                raise self._timeout(
                    Component.GUEST if self.serial else Component.QEMU,
                    f"run timeout after {cfg.timeouts.run:.0f} s (last serial line: {last})",
                )
            time.sleep(_POLL)
        # QEMU is gone: collect the rest of its console before judging.
        for t in self.threads:
            t.join(timeout=5.0)
        self._take_output()
        if self.noise:
            log.debug("filtered %d lines of QEMU SYNC_SYSMEM noise", self.noise)
        if self.panic_at is not None:
            panic = next(ln for ln in self.serial if PANIC.search(ln))
            raise LaunchError(Component.GUEST, f"kernel panic: {panic.strip()}")
        rc = self.end_marker()
        if rc is None:
            err = _last_line(self.res.qemu_log)
            why = f" ({err})" if err else ""
            qemu_failure = f"{_how(self.res.qemu_rc)} before the guest's end marker{why}"
            if (src := self._server_failure(grace=1.0)) is not None:
                # QEMU failing after the server died is a consequence (e.g. its debugcon
                # chardev could not connect): name the root cause.
                raise LaunchError(
                    Component.SERVER, f"{self._server_death(src)}; then QEMU {qemu_failure}"
                )
            raise LaunchError(Component.QEMU, qemu_failure)
        self.res.guest_rc = rc
        if self.res.qemu_rc != 0:
            raise LaunchError(Component.QEMU, f"{_how(self.res.qemu_rc)} after the end marker")
        deadline = time.monotonic() + cfg.timeouts.server_exit
        while (src := self.server.poll()) is None:
            if time.monotonic() > deadline:
                raise LaunchError(
                    Component.SERVER,
                    f"still running {cfg.timeouts.server_exit:.0f} s after QEMU exited",
                )
            time.sleep(_POLL)
        self.res.server_rc = src
        if src != 0:
            raise LaunchError(Component.SERVER, self._server_death(src))

    def _timeout(self, suspect: Component, what: str) -> LaunchError:
        """A phase timed out.  The vCPU waits for every device access without a timeout of
        its own, so a device server that stopped answering stalls the guest too: blame it
        when it is visibly stopped, and say when it last served a transaction."""
        assert self.server is not None
        stopped = _group_states(self.server.pid) & {"T", "t"}
        try:
            ago = time.time() - self.res.txlog.stat().st_mtime
            idle = f"; its last transaction was {ago:.1f} s ago"
        except OSError:
            idle = "; it logged no transaction"
        if stopped:
            return LaunchError(Component.SERVER, f"stopped (not answering QEMU): {what}{idle}")
        return LaunchError(suspect, f"{what}; device server running{idle}")

    def _server_failure(self, grace: float) -> int | None:
        """The server's exit status if it ended abnormally (within `grace` seconds), else
        None.  A healthy server only exits, with 0, after QEMU closed the connection."""
        assert self.server is not None
        deadline = time.monotonic() + grace
        while (src := self.server.poll()) is None and time.monotonic() < deadline:
            time.sleep(_POLL)
        if src is None or src == 0:
            return None
        self.res.server_rc = src
        return src

    def _server_death(self, rc: int) -> str:
        how = _how(rc)
        detail = _last_line(self.res.server_stderr)
        return f"{how} while QEMU was running" + (f": {detail}" if detail else "")

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None or _group_alive(child.pid):
                log.info("stopping %s (pid %d)", child.name, child.pid)
                child.stop()
        for child in self.children:
            rc = child.poll()
            if child.name is Component.SERVER and self.res.server_rc is None:
                self.res.server_rc = rc
            if child.name is Component.QEMU and self.res.qemu_rc is None:
                self.res.qemu_rc = rc
        for t in self.threads:
            t.join(timeout=5.0)
        if self.qemu is not None:
            self._take_output()
        for s in self.fds:
            s.close()
        for f in self.files:
            f.close()
        shutil.rmtree(self.rundir, ignore_errors=True)


def _collect_sim_artifacts(
    res: RunResult, cfg: LaunchConfig, server_pid: int | None, since: float
) -> None:
    """Move this run's waveforms and simulator files into the output folder.

    The RTL server simulates in build/bridge-sim/<sim>/run-<its pid>/ (qbridge.rtl.backend)
    and removes that folder after a good run without waves; whatever is left belongs to
    this run alone (its pid).  Verilator dumps its FST there; Icarus dumps into its build
    folder (qbridge/rtl/simbuild.py: build-icarus-waves/cosim_top.fst), which is copied if this run
    wrote it.
    """
    if cfg.backend != "rtl" or server_pid is None:
        return
    sim_root = bridge_sim_root(cfg.sim)
    run_dir = sim_root / f"run-{server_pid}"
    if run_dir.is_dir():
        # Waves next to the other artifacts; the rest (sim.log, results.xml, error.txt)
        # in out/sim/.
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
            wave = path.suffix in (".fst", ".vcd")
            dest = res.out / path.name if wave else res.out / "sim" / path.relative_to(run_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, dest)
            if wave:
                res.waves.append(dest)
        shutil.rmtree(run_dir, ignore_errors=True)
    if cfg.waves:
        for wave in sorted(sim_root.glob("build-*-waves/*.fst")):
            if wave.stat().st_mtime >= since:
                dest = res.out / wave.name
                shutil.copy2(wave, dest)
                res.waves.append(dest)


def _prepare_out(res: RunResult) -> None:
    """Create the output folder, prove it writable (a probe file: access() would say yes
    to root even on a read-only mount) and clear a previous run's artifacts, so that a
    reused folder never shows them as this run's."""
    out = res.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe-"):
        pass
    for stale in (res.capture, res.txlog, res.server_log, *out.glob("*.fst"), *out.glob("*.vcd")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(out / "sim", ignore_errors=True)


def _qemu_missing(cfg: LaunchConfig) -> str | None:
    """Why the configured QEMU cannot run, before anything is started; None if it can."""
    if cfg.qemu_root is None:
        return None if shutil.which(cfg.qemu) else f"{cfg.qemu} is not installed (make setup)"
    from qbridge import qemu_chroot

    problem = qemu_chroot.problem(cfg.qemu_root)
    if problem:
        return f"QEMU for vfio-user is not ready in {cfg.qemu_root}: {problem} (make qemu11)"
    return None


def launch(cfg: LaunchConfig) -> RunResult:
    """Run one VM boot to completion or failure; never raises for a component failure."""
    out = Path(cfg.out)
    res = RunResult(
        ok=False, guest_rc=None, failed=None, reason="", serial="", elapsed=0.0, out=out,
        serial_log=out / "serial.log", capture=out / "debugcon.bin",
        server_log=out / "server.log", server_stderr=out / "server.stderr",
        qemu_log=out / "qemu.log", txlog=out / "txlog.txt",
    )
    try:
        _prepare_out(res)
    except OSError as exc:
        # Before anything starts: a clear launcher failure, not a traceback.
        res.failed = Component.LAUNCHER
        res.reason = f"the output folder {out} is not writable: {exc.strerror or exc}"
        log.error("run FAILED: %s: %s", res.failed, res.reason)
        return res
    res.transport, res.backend = cfg.transport, cfg.backend
    res.sim = cfg.sim if cfg.backend == "rtl" else ""
    missing = _qemu_missing(cfg)
    if missing:
        res.failed, res.reason = Component.QEMU, missing
        log.error("run FAILED: %s: %s", res.failed, res.reason)
        return res
    res.qemu_version = qemu_version(cfg)
    if cfg.record is not None:  # a stale record must not pass for this run's
        Path(cfg.record).unlink(missing_ok=True)
    wall0 = time.time()
    t0 = time.monotonic()
    run = _Run(cfg, res, t0)
    try:
        proxy = run.start_server()
        run.start_qemu(proxy)
        run.supervise()
    except LaunchError as exc:
        res.failed, res.reason = exc.component, exc.message
    except BaseException:
        res.failed, res.reason = Component.LAUNCHER, "interrupted"
        raise
    finally:
        run.close()
        res.serial = "\n".join(run.serial) + ("\n" if run.serial else "")
        res.elapsed = time.monotonic() - t0
        _collect_sim_artifacts(res, cfg, run.server.pid if run.server else None, wall0)
        if cfg.record is not None:  # what the guest did around each event, for a replay
            append_markers(cfg.record, zip(run.serial_times, run.serial, strict=True))
    if res.failed is None:
        if res.guest_rc == 0:
            res.ok, res.reason = True, "guest script exited 0"
        else:
            res.failed, res.reason = Component.GUEST, f"guest script exited {res.guest_rc}"
    if res.ok:
        log.info("run passed in %.1f s", res.elapsed)
    else:
        log.error("run FAILED in %.1f s: %s: %s", res.elapsed, res.failed, res.reason)
    return res


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qbridge.launch", description=__doc__.split("\n")[0])
    p.add_argument("--kernel", type=Path, required=True, help="vmlinux (PVH) or bzImage")
    p.add_argument("--initrd", type=Path, required=True, help="initramfs cpio")
    p.add_argument("--out", type=Path, required=True, help="folder for logs and captures")
    p.add_argument("--backend", choices=("model", "rtl"), default="model")
    p.add_argument("--transport", choices=TRANSPORTS, default=TRANSPORTS[0],
                   help="proxy: host QEMU 7.2, x-pci-proxy-dev; vfio-user: QEMU 11.1 in "
                        "the project's chroot")
    p.add_argument("--sim", choices=("icarus", "verilator"), default="icarus")
    p.add_argument("--waves", type=int, choices=(0, 1), default=0)
    p.add_argument("--accel", choices=("tcg", "kvm"), default="tcg")
    p.add_argument("--cpu", default=None, help="QEMU -cpu model")
    p.add_argument("--pin", type=int, default=None, metavar="CPU",
                   help="pin QEMU and the device server to this CPU")
    p.add_argument("--append", default=DEFAULT_APPEND, help="kernel command line")
    p.add_argument("--timeout", type=float, default=Timeouts.run, help="whole-run timeout (s)")
    p.add_argument("--ready-timeout", type=float, default=None,
                   help="device server start-up timeout (s)")
    p.add_argument("--boot-timeout", type=float, default=Timeouts.boot,
                   help=f"QEMU start to the guest's {BEGIN_MARKER} line (s)")
    p.add_argument("--no-begin-marker", action="store_true",
                   help="the initrd is not from qbridge.image: no boot-phase timeout")
    p.add_argument("--server-module", default="qbridge.server",
                   help="device server module to run with python -m (for tests)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def stop_on_sigterm() -> None:
    # A SIGTERM to the launcher must still stop its children: turn it into an exception
    # so that launch()'s cleanup runs.
    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(name)s: %(levelname)s: %(message)s",
    )
    stop_on_sigterm()
    ready = args.ready_timeout or (180.0 if args.backend == "rtl" else Timeouts.server_ready)
    try:
        cfg = LaunchConfig(
            kernel=args.kernel, initrd=args.initrd, out=args.out, backend=args.backend,
            transport=args.transport, sim=args.sim, waves=bool(args.waves), accel=args.accel,
            cpu=args.cpu, pin=args.pin,
            append=args.append, progress=sys.stdout, server_module=args.server_module,
            timeouts=Timeouts(server_ready=ready, boot=args.boot_timeout, run=args.timeout),
            wait_for_begin=not args.no_begin_marker,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"launch: {exc}", file=sys.stderr)
        return 2
    try:
        res = launch(cfg)
    except KeyboardInterrupt:
        print("launch: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    status = "PASS" if res.ok else f"FAIL ({res.failed}: {res.reason})"
    print(f"launch: {status}; artifacts in {res.out}", flush=True)
    return res.rc


if __name__ == "__main__":
    sys.exit(main())
