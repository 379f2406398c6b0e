"""`make robustness`: the long runs of issue 6 and one report with the counts.

    python -m bench.robustness --out out/robustness [--quick]

1. bridge fuzzing (bench.robustness.fuzz_bridge): >= 100000 hostile x-pci-proxy-dev inputs,
   then (bench.robustness.fuzz_vfio_user) >= 100000 hostile vfio-user inputs, model backend;
2. guest misbehaviour (bench.robustness.guest_misuse): the exhaustive sweep on the model and on the
   RTL (Verilator), the corner sweep on Icarus;
3. faults (bench.robustness.vm_faults): 20 random-time kills of the RTL simulator, then 20 of QEMU,
   a guest panic, an unwritable output folder;
4. load (bench.robustness.vm_load): 1 MiB through /dev/debugcon into the RTL capture (Verilator),
   8 processes x 1000 ioctls, 100 insmod/rmmod cycles.

Prints the counts (inputs tried, vfio-user inputs, messages, error replies and fd leaks,
faults injected, bytes streamed, hangs, losses) and
writes them with every detail to OUT/robustness.json.  Exit status 0 only if every part
passed.  `--quick` runs each part small (a smoke test of the report itself).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from bench.robustness import fuzz_bridge, fuzz_vfio_user, guest_misuse, vm_faults, vm_load

log = logging.getLogger("cosim.bench.robustness")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.robustness",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/robustness"))
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    t0 = time.monotonic()
    report: dict[str, object] = {"quick": quick, "seed": args.seed}

    log.info("1/4 bridge fuzzing (x-pci-proxy-dev, then vfio-user)")
    fuzz = fuzz_bridge.run(2000 if quick else 100000, args.seed)
    report["fuzz"] = fuzz
    fuzz_vu = fuzz_vfio_user.run(2000 if quick else 100000, args.seed)
    report["fuzz_vfio_user"] = fuzz_vu

    log.info("2/4 guest misbehaviour")
    misuse = []
    runs = [("model", None, not quick), ("rtl", "verilator", not quick), ("rtl", "icarus", False)]
    for backend, sim, exhaustive in runs:
        ops = guest_misuse.sweep(exhaustive) + guest_misuse.checks()
        if backend == "model":
            r = guest_misuse.run_model(ops)
        else:
            assert sim is not None
            with tempfile.TemporaryDirectory(prefix="cosim-misuse-") as tmp:
                r = guest_misuse.run_rtl(ops, sim, Path(tmp))
        log.info("%s%s: %d accesses, %d mismatches", r.backend,
                 " (exhaustive)" if exhaustive else "", r.accesses, len(r.mismatches))
        misuse.append({**r.as_dict(), "exhaustive": exhaustive})
    report["misuse"] = misuse

    log.info("3/4 faults")
    faults = vm_faults.run(out / "faults", 2 if quick else 20, args.seed)
    report["faults"] = {k: v for k, v in faults.items() if k != "trials"}
    (out / "faults.json").write_text(json.dumps(faults, indent=2) + "\n")

    log.info("4/4 load")
    load = vm_load.run(out / "load", "rtl", "verilator",
                       debugcon_bytes=(64 << 10) if quick else (1 << 20),
                       procs=4 if quick else 8, ioctls=100 if quick else 1000,
                       cycles=10 if quick else 100)
    report["load"] = load.__dict__

    hangs = sum(int(r["hangs"]) for r in (fuzz, fuzz_vu, faults))  # type: ignore[call-overload]
    losses = load.bytes_lost + load.numbers_lost
    passed = {
        "fuzz": fuzz["failures"] == 0 and fuzz["hangs"] == 0,
        "fuzz_vfio_user": fuzz_vu["failures"] == 0 and fuzz_vu["hangs"] == 0,
        "misuse": all(m["mismatches"] == 0 for m in misuse),
        "faults": faults["passed"] == faults["faults_injected"],
        "load": load.ok,
    }
    report["summary"] = {
        "inputs_tried": fuzz["inputs"],
        "inputs_rejected": fuzz["rejected"],
        "vfio_user_inputs": fuzz_vu["inputs"],
        "vfio_user_messages": fuzz_vu["messages"],
        "vfio_user_error_replies": fuzz_vu["error_replies"],
        "vfio_user_rejected": fuzz_vu["rejected"],
        "vfio_user_fd_leaks": fuzz_vu["fd_leaks"],
        "misuse_accesses": sum(int(m["accesses"]) for m in misuse),  # type: ignore[call-overload]
        "faults_injected": faults["faults_injected"],
        "bytes_streamed": load.bytes_streamed,
        "ioctls": load.ioctls,
        "insmod_rmmod_cycles": load.cycles,
        "hangs": hangs,
        "losses": losses,
        "passed": passed,
        "seconds": round(time.monotonic() - t0, 1),
    }
    (out / "robustness.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    s = report["summary"]
    assert isinstance(s, dict)
    print("robustness report (details: %s)" % (out / "robustness.json"))
    for key in ("inputs_tried", "inputs_rejected", "vfio_user_inputs", "vfio_user_messages",
                "vfio_user_error_replies", "vfio_user_rejected", "vfio_user_fd_leaks",
                "misuse_accesses", "faults_injected", "bytes_streamed", "ioctls",
                "insmod_rmmod_cycles", "hangs", "losses"):
        print(f"  {key.replace('_', ' '):24s} {s[key]}")
    for part, ok in passed.items():
        print(f"  {part:24s} {'PASS' if ok else 'FAIL'}")
    print(f"  {'seconds':24s} {s['seconds']}")
    return 0 if all(passed.values()) and hangs == 0 and s["losses"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
