"""Fault injection into whole VM runs (issue 6, item 3), through the launcher's CLI as an
operator runs it:

- kill the RTL simulator (Icarus' vvp, the device server's serve loop) or QEMU with
  SIGKILL at a random point of a run (from the launcher's start through firmware, kernel
  boot and the guest using the device);
- make the guest kernel panic;
- give it an output folder it cannot write.

Each run must end within a bounded time with a non-zero exit status and a FAIL line
naming the component, keep its artifacts, and leave no process behind: every process
that ever appeared under the launcher (sampled from /proc every 50 ms) must be gone.

    python -m bench.robustness.vm_faults [--kills 20] [--seed 1] --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from qbridge import image
from qbridge.childenv import child_env

from models.contract.layout import REPO as ROOT

log = logging.getLogger("cosim.bench.faults")

NOTICE_S = 30.0  # kill -> launcher exit, SIGTERM grace and wind-down included
SAMPLE_S = 0.05

# The guest keeps using the device (an ID register read every 0.1 s) for a while, so that
# a kill at any point lands in a live run.
def busy_script(seconds: int) -> str:
    return f"""\
for d in /sys/bus/pci/devices/*; do
	[ "$(cat $d/vendor)" = 0x1234 ] && [ "$(cat $d/device)" = 0xcafe ] && bdf=$d
done
echo 1 > $bdf/enable
read start end flags < $bdf/resource
i=0
while [ $i -lt {seconds * 10} ]; do
	echo "BUSY $i $(devmem $((start + 8)) 32)"
	sleep 0.1
	i=$((i + 1))
done
"""


BUSY_SCRIPT = busy_script(120)

# victim -> (backend, command-line substring of the process to kill, component named,
# latest kill time in seconds from the launcher's start: about when the guest is busy).
VICTIMS = {
    "simulator": ("rtl", "vvp ", "device server", 45.0),
    "qemu": ("model", "qemu-system", "QEMU", 20.0),
}


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(root: int) -> dict[int, str]:
    """The live process tree under `root`, pid -> command line (from a /proc scan)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[1], []).append(int(entry))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = _cmdline(child)
            todo.append(child)
    return found


@dataclass
class Trial:
    fault: str
    planned_s: float | None = None  # when the kill was due
    killed_s: float | None = None  # when it happened (later if the victim was not up yet)
    ended_s: float | None = None  # launcher exit, from its start
    rc: int | None = None
    hang: bool = False
    left_behind: int = 0
    ok: bool = False
    problem: str = ""
    verdict: str = ""  # the launcher's FAIL line


def _launcher(initrd: Path, out: Path, backend: str, log_file: Path,
              extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    env = child_env()
    with open(log_file, "wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "qbridge.launch", "--kernel", str(image.vmlinux()),
             "--initrd", str(initrd), "--out", str(out), "--timeout", "300",
             "--ready-timeout", "600", "--backend", backend, "--sim", "icarus",
             *(extra or [])],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


def _finish(trial: Trial, proc: subprocess.Popen[bytes], family: dict[int, str],
            t0: float, log_file: Path, component: str, artifacts: list[Path],
            deadline: float) -> Trial:
    """Wait for the launcher (sampling its tree), then judge the run."""
    while proc.poll() is None and time.monotonic() < deadline:
        family.update(descendants(proc.pid))
        time.sleep(SAMPLE_S)
    if proc.poll() is None:
        trial.hang = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    trial.ended_s = round(time.monotonic() - t0, 2)
    trial.rc = proc.returncode
    time.sleep(0.2)  # let the kernel reap what died with the launcher
    left = {p: c for p, c in family.items() if _alive(p)}
    trial.left_behind = len(left)
    for pid in left:  # never leave them running, even when the trial fails
        os.kill(pid, signal.SIGKILL)
    output = log_file.read_text(errors="replace")
    trial.verdict = next((x for x in output.splitlines() if "launch: " in x and "FAIL" in x),
                         "")
    missing = [a.name for a in artifacts if not a.is_file()]
    problems = []
    if trial.hang:
        problems.append("the launcher did not end in time")
    if trial.rc == 0:
        problems.append("exit status 0")
    if f"FAIL ({component}:" not in output:
        problems.append(f"no FAIL line naming the {component}")
    if "Traceback" in output:
        problems.append("a traceback")
    if missing:
        problems.append(f"artifacts not kept: {missing}")
    if left:
        problems.append(f"processes left behind: {left}")
    trial.problem = "; ".join(problems)
    trial.ok = not problems
    return trial


def kill_trial(victim: str, at: float, initrd: Path, out: Path) -> Trial:
    backend, pattern, component, _ = VICTIMS[victim]
    trial = Trial(f"kill-{victim}", planned_s=round(at, 2))
    log_file = out.with_suffix(".log")
    t0 = time.monotonic()
    proc = _launcher(initrd, out, backend, log_file)
    family: dict[int, str] = {}
    give_up = t0 + at + 600  # the victim must appear (an RTL build may be first)
    target = None
    while proc.poll() is None and time.monotonic() < give_up:
        family.update(descendants(proc.pid))
        if time.monotonic() - t0 >= at:
            target = next((p for p, c in family.items() if pattern in c and _alive(p)), None)
            if target is not None:
                os.kill(target, signal.SIGKILL)
                trial.killed_s = round(time.monotonic() - t0, 2)
                break
        time.sleep(SAMPLE_S)
    if target is None:
        trial.problem = f"no {pattern.strip()} process to kill (launcher rc {proc.poll()})"
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        return trial
    # The server's log and stderr exist from its start; QEMU's logs once QEMU started.
    qemu_up = any("qemu-system" in c for c in family.values())
    artifacts = [out / "server.log", out / "server.stderr"]
    if qemu_up:
        artifacts += [out / "serial.log", out / "qemu.log"]
    return _finish(trial, proc, family, t0, log_file, component, artifacts,
                   time.monotonic() + NOTICE_S)


def panic_trial(out: Path) -> Trial:
    trial = Trial("guest-panic")
    initrd = image.build_initramfs("echo c > /proc/sysrq-trigger\nsleep 30\n",
                                   out.with_suffix(".cpio"))
    log_file = out.with_suffix(".log")
    t0 = time.monotonic()
    proc = _launcher(initrd, out, "model", log_file)
    return _finish(trial, proc, {}, t0, log_file, "guest", [out / "serial.log"],
                   t0 + 300 + NOTICE_S)


def unwritable_trial(out: Path) -> Trial:
    """The launcher as root without CAP_DAC_OVERRIDE, so a 0555 folder is unwritable."""
    trial = Trial("unwritable-output")
    initrd = image.build_initramfs("true\n", out.with_suffix(".cpio"))
    out.mkdir(mode=0o555)
    out.chmod(0o555)
    log_file = out.with_suffix(".log")
    env = child_env()
    t0 = time.monotonic()
    with open(log_file, "wb") as sink:
        proc = subprocess.Popen(
            ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--",
             sys.executable, "-m", "qbridge.launch", "--kernel", str(image.vmlinux()),
             "--initrd", str(initrd), "--out", str(out)],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    return _finish(trial, proc, {}, t0, log_file, "launcher", [], t0 + NOTICE_S)


def run(out: Path, kills: int, seed: int) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    busy = image.build_initramfs(BUSY_SCRIPT, out / "busy.cpio")
    trials: list[Trial] = []
    for victim in VICTIMS:  # the simulator first, then QEMU
        latest = VICTIMS[victim][3]
        for i in range(kills):
            trial = kill_trial(victim, rnd.uniform(0.0, latest), busy, out / f"{victim}-{i}")
            log.info("%s %d: planned %.1f s, killed %.1f s, ended %.1f s: %s", victim, i,
                     trial.planned_s, trial.killed_s or -1, trial.ended_s or -1,
                     "ok" if trial.ok else trial.problem)
            trials.append(trial)
    for trial in (panic_trial(out / "panic"), unwritable_trial(out / "unwritable")):
        log.info("%s: %s", trial.fault, "ok" if trial.ok else trial.problem)
        trials.append(trial)
    return {
        "faults_injected": len(trials),
        "kills": {v: sum(t.fault == f"kill-{v}" for t in trials) for v in VICTIMS},
        "passed": sum(t.ok for t in trials),
        "hangs": sum(t.hang for t in trials),
        "left_behind": sum(t.left_behind for t in trials),
        "max_notice_s": max((t.ended_s - t.killed_s for t in trials
                             if t.ended_s is not None and t.killed_s is not None), default=0),
        "trials": [asdict(t) for t in trials],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.robustness.vm_faults",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="kills per victim")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
    result = run(args.out, args.kills, args.seed)
    (args.out / "faults.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"vm_faults: {result['faults_injected']} faults, {result['passed']} handled, "
          f"{result['hangs']} hangs, {result['left_behind']} processes left behind")
    return 0 if result["passed"] == result["faults_injected"] else 1


if __name__ == "__main__":
    sys.exit(main())
