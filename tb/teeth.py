"""Teeth check: does `pytest tb` fail when the RTL is broken, and how?  A tool, not a test.

    python -m tb.teeth [MUTANT ...] [--out /tmp/cosim-teeth]

For each mutant: copy rtl/ to OUT/MUTANT/rtl, apply one textual mutation there (never in
the checkout), generate that copy's Verilog in a separate process (with the copy first on
the import path), and run `pytest tb` on it through COSIM_VERILOG / COSIM_TB_OUT.  The
patches quote rtl/ source text: when the RTL changes so a patch no longer applies, the
tool says so instead of testing nothing.

How it was caught matters, not only whether: a check that only notices a bug through a
timeout ("... still pending after 200000 cycles") reports it far from its cause, and a
timeout-only catch means a comparator let the mismatch pass.  So each failing test of
the pytest run (its JUnit file, OUT/MUTANT/pytest.xml) is classified from its failure
message (`classify`): `timeout` (timeout wording), `crash` (no result from the
simulator), `error` (the suite could not run, e.g. the mutant does not build),
`consequence` (a test that fails because cases failed, not a catch: the merged coverage,
the same-seed stimulus comparison of a case that logged no stimulus) or `assertion`
(anything else: a check failed at a mismatch).  A mutant is
CAUGHT when, on every simulator, some test failed by assertion; else TIMEOUT (only by
timeouts somewhere), WEAK (by assertion on one simulator only) or MISSED.  Exit status 0
only if every mutant is CAUGHT.  OUT/summary.json has every failing test with its kind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

from qbridge.childenv import child_env
from qbridge.rtl.simbuild import SIMULATORS

from models.contract.layout import REPO

__all__ = ["MUTANTS", "Failure", "classify", "failures", "main", "verdict"]

# name -> (file in rtl/, original text, mutated text)
MUTANTS: dict[str, tuple[str, str, str]] = {
    "tap_position": ("rng.py", "feedback.eq(s[DEGREE - SEPARATION] + s[0])",
                     "feedback.eq(s[DEGREE - SEPARATION - 1] + s[0])"),
    "discard_count": ("rng.py", "count.eq(DISCARD - 1)]", "count.eq(DISCARD - 2)]"),
    "seed0_rule": ("rng.py", "shift_in.eq(Mux(bus.w_data == 0, 1, bus.w_data))",
                   "shift_in.eq(bus.w_data)"),
    "large_seed_sign": ("rng.py", "w.eq(Mux(word[31], word - 2, word))", "w.eq(word)"),
    "read_not_held_while_seeding": (
        "rng.py", "bus.ack.eq(Mux(rd_next, phase == Phase.READY, bus.stb) & ~waits)",
        "bus.ack.eq(bus.stb & ~waits)"),
    # RNG64's high DW (0x14) returns a number but does not advance the generator.
    "rng64_high_dw_no_step": ("rng.py", "with m.Elif((rd_next & ~self.hold) | self.take):  #",
                              "with m.Elif((rd_next & ~self.hold & (reg != 0x14 >> 2)) "
                              "| self.take):  #"),
    "bar_size_mask": ("config.py", "mask = dword.writable  #",
                      "mask = dword.writable | (0x800 if dword.name == 'BAR0' else 0)  #"),
    "command_gating": ("top.py", "& (cfg.command & COMMAND_MEMORY).any()", "& 1"),
    "debugcon_drop_when_full": ("debugcon.py",
                                "bus.ack.eq(bus.stb & (~bus.we | fifo.w_rdy))",
                                "bus.ack.eq(bus.stb)"),
    "completion_tag": ("top.py", 'self.cpl.tag.eq(fields["tag"])',
                       'self.cpl.tag.eq(fields["tag"][:7])'),
    # The Interrupt Line keeps what software wrote across a reset (power-on init only).
    "config_not_reset": ("config.py",
                         "reg = Signal(32, init=dword.reset, name=dword.name.lower())",
                         "reg = Signal(32, init=dword.reset, name=dword.name.lower(), "
                         "reset_less=dword.name == 'INTERRUPT')"),
    # Console bytes with bit 7 set are acknowledged but never queued (an ASCII-only path).
    "console_byte_lost": ("debugcon.py", "fifo.w_en.eq(bus.stb & bus.we & fifo.w_rdy),",
                          "fifo.w_en.eq(bus.stb & bus.we & fifo.w_rdy "
                          "& ~bus.w_data[8 * LANE + 7]),"),
    # Console bytes with bit 7 set go out twice: the FIFO is popped on their second beat.
    "console_byte_duplicated": (
        "top.py", "wiring.connect(m, con.con, wiring.flipped(self.con))",
        "again = Signal()\n"
        "        m.d.comb += [self.con.valid.eq(con.con.valid), self.con.data.eq(con.con.data),\n"
        "                     con.con.ready.eq(self.con.ready & (again | ~con.con.data[7]))]\n"
        "        with m.If(self.con.valid & self.con.ready & con.con.data[7]):\n"
        "            m.d.sync += again.eq(~again)"),
    # Console bytes with bit 7 set come out with bit 6 flipped: a wrong byte, which the
    # scoreboard used to log only (the test then failed by the drain timeout).
    "console_byte_wrong": ("debugcon.py", "fifo.w_data.eq(bus.w_data.word_select(LANE, 8)),",
                           "fifo.w_data.eq(bus.w_data.word_select(LANE, 8) "
                           "^ (bus.w_data[8 * LANE + 7] << 6)),"),
    # Aliasing decoders (tb.decode_sweep): each answers, or writes, at an address that
    # differs from a claimed one in one address bit.
    # BAR0 decode ignoring address bit 40: BAR0 also answers at 1 << 40 above its base.
    "bar_ignores_addr_bit40": ("top.py", "& (addr[32:] == 0)",
                               "& (addr[32:40] == 0) & (addr[41:] == 0)"),
    # BAR0 decode ignoring address bit 20 of the base comparison.
    "bar_ignores_addr_bit20": ("top.py",
                               "(addr[_BAR_BITS:32] == cfg.bar0[_BAR_BITS:])",
                               "(addr[_BAR_BITS:20] == cfg.bar0[_BAR_BITS:20]) "
                               "& (addr[21:32] == cfg.bar0[21:])"),
    # Register select ignoring offset bit 6: RNG answers at 0x40, SEED at 0x44, ID at 0x48.
    "rng_select_ignores_offset_bit6": ("rng.py", "reg = bus.addr[2:]",
                                       "reg = bus.addr[2:] & 0b1111101111"),
    # SEED written through an alias: offset bits 8..11 ignored by the write decode only
    # (reads at 0x104 still return 0, so only a read-back of the generator shows it).
    "seed_write_alias": ("rng.py", 'bus.we & (reg == _REG["SEED"].offset >> 2)',
                         'bus.we & (reg[:6] == _REG["SEED"].offset >> 2)'),
    # debugcon port decode ignoring port bit 8: port 0x1e9 is the console too.
    "debugcon_ignores_port_bit8": ("top.py", "& (addr == DEBUGCON_PORT & ~3)",
                                   "& (addr[:8] == DEBUGCON_PORT & ~3) & (addr[9:] == 0)"),
    # debugcon written through an alias: a write (only) to port 0x2e9 reaches the console.
    "debugcon_write_alias": ("top.py", "& (addr == DEBUGCON_PORT & ~3)",
                             "& ((addr == DEBUGCON_PORT & ~3) "
                             "| (we & (addr == (DEBUGCON_PORT & ~3) ^ 0x200)))"),
    # Config decode ignoring offset bit 10: the header appears again at 0x400.
    "cfg_ignores_offset_bit10": ("config.py", "in_range = bus.addr[8:] == 0",
                                 "in_range = (bus.addr[8:10] == 0) & (bus.addr[11:] == 0)"),
    # Config writes ignoring the range check: a write to 0x104 changes COMMAND (reads of
    # 0x104 still return 0, so only the header read back after the write shows it).
    "cfg_write_alias": ("config.py", "with m.If(bus.stb & bus.we & in_range & (",
                        "with m.If(bus.stb & bus.we & ("),
    # Config read select ignoring offset bit 7: 0x80 reads as VENDOR_DEVICE, 0x90 as BAR0.
    "cfg_read_ignores_offset_bit7": ("config.py", "with m.Switch(bus.addr[2:8]):",
                                     "with m.Switch(bus.addr[2:7]):"),
    # DMA: the transfer stops one DW short of its length.
    "dma_short_by_one_dw": ("dma.py", "last_dw.eq(left <= 4)", "last_dw.eq(left <= 8)"),
    # DMA: the last DW is not recognised: the engine writes on past the buffer.
    "dma_write_past_buffer": ("dma.py", "last_dw.eq(left <= 4)", "last_dw.eq(left == 0)"),
    # The transfer ends without setting the interrupt condition: no INTx, no MSI.
    "dma_missing_interrupt": ("dma.py", "m.d.sync += int_status.eq(1)",
                              "m.d.sync += int_status.eq(0)"),
    # INTx asserted although COMMAND.INTX_DISABLE says no.
    "intx_ignores_disable": ("dma.py",
                             "self.intx.eq(int_status & ~self.msi_enable & ~self.intx_disable)",
                             "self.intx.eq(int_status & ~self.msi_enable)"),
    # Device requests although COMMAND.MASTER is clear.
    "dma_ignores_bus_master": ("top.py", "engine.master.eq((cfg.command & COMMAND_MASTER).any())",
                               "engine.master.eq(1)"),
    # An MSI message although Bus Master is off (an MSI is a memory write).
    "msi_ignores_bus_master": ("dma.py",
                               "with m.If(t_irq & ~int_status & self.msi_enable & self.master):",
                               "with m.If(t_irq & ~int_status & self.msi_enable):"),
}

# Failure messages that say a test gave up waiting rather than saw a mismatch.
_TIMEOUT = re.compile(r"still pending after|SimTimeoutError|TimeoutError|not done within|"
                      r"no completion for|did not accept|timed out", re.IGNORECASE)
# pytest ids of the simulator cases: test_..._passes[SIM-CASE] and coverage[SIM].
_CASE_ID = re.compile(r"\[(?P<sim>[a-z]+)(?:-(?P<case>[^\]]+))?\]$")
_CASE_WHY = re.compile(r" failed on [a-z]+: (?P<why>.*)", re.DOTALL)
_SEED = re.compile(r"cocotb seed: (\d+)")


@dataclass(frozen=True)
class Failure:
    test: str  # the pytest test id, e.g. test_rtl_case_passes[icarus-RandomMixMatchesModel]
    sim: str  # the simulator, or "-" for a test of no simulator
    case: str  # the cocotb case, else the pytest test's name
    kind: str  # assertion, timeout, crash, error, consequence
    message: str  # first line of the case's own failure message


def classify(test: str, message: str) -> str:
    """The kind of a failure (see the module docstring) from its test id and message."""
    if (test.startswith("test_rtl_functional_coverage_is_complete")
            or "logged no stimulus line" in message):
        return "consequence"
    # The case's own message, without the pytest wrapper naming it: case names such as
    # endpoint_stuck_console_times_out_... must not read as a timeout.
    found = _CASE_WHY.search(message)
    why = found.group("why") if found else message
    if "could not run" in message:
        return "error"
    if "no result: did the simulator crash" in why or "did not run on" in message:
        return "crash"
    if _TIMEOUT.search(why):
        return "timeout"
    return "assertion"


def failures(junit: Path) -> list[Failure]:
    """Every failed or errored test of a pytest JUnit file, classified."""
    found = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is None:
            continue
        test = case.get("name", "?")
        message = bad.get("message") or bad.text or ""
        m = _CASE_ID.search(test)
        sim = m.group("sim") if m and m.group("sim") in SIMULATORS else "-"
        name = (m.group("case") if m and m.group("case") else test.split("[")[0])
        why = _CASE_WHY.search(message)
        first = (why.group("why") if why else message).strip().splitlines()
        found.append(Failure(test, sim, name, classify(test, message),
                             first[0][:160] if first else ""))
    return found


def verdict(found: list[Failure], sims: tuple[str, ...] = SIMULATORS) -> str:
    """CAUGHT, WEAK, TIMEOUT or MISSED (see the module docstring), over `sims`."""
    by_assertion = {f.sim for f in found if f.kind == "assertion"}
    if all(sim in by_assertion for sim in sims):
        return "CAUGHT"
    if by_assertion:
        return "WEAK"
    if any(f.kind == "timeout" for f in found):
        return "TIMEOUT"
    return "MISSED"

_GENERATE = (
    "import sys; from pathlib import Path; import rtl; "
    "assert rtl.__file__.startswith(sys.argv[1]), 'imported the unmutated rtl: ' + rtl.__file__; "
    "from rtl.generate import generate; generate(Path(sys.argv[2]))"
)


def mutate(name: str, work: Path) -> Path:
    """Write the mutant's Verilog under `work`; return its path."""
    file, old, new = MUTANTS[name]
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(REPO / "rtl", work / "rtl", ignore=shutil.ignore_patterns("__pycache__"))
    src = work / "rtl" / file
    text = src.read_text()
    if text.count(old) != 1:
        raise RuntimeError(f"mutant {name}: its patch no longer applies to rtl/{file}")
    src.write_text(text.replace(old, new))
    env = child_env(python_first=[work])
    subprocess.run([sys.executable, "-c", _GENERATE, str(work), str(work / "verilog")],
                   cwd=work, env=env, check=True, timeout=300)
    return work / "verilog" / "cosim_top.v"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mutants", nargs="*", help=f"default: all of {' '.join(MUTANTS)}")
    parser.add_argument("--out", type=Path, default=Path("/tmp/cosim-teeth"))
    args = parser.parse_args(argv)
    summary = {}
    unknown = [n for n in args.mutants if n not in MUTANTS]
    if unknown:
        parser.error(f"unknown mutants {unknown}; known: {' '.join(MUTANTS)}")
    for name in args.mutants or list(MUTANTS):
        work = args.out / name
        verilog = mutate(name, work)
        env = dict(os.environ, COSIM_VERILOG=str(verilog), COSIM_TB_OUT=str(work / "out"))
        junit = work / "pytest.xml"
        junit.unlink(missing_ok=True)
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"--junitxml={junit}", "tb"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
        )
        (work / "pytest.txt").write_text(run.stdout + run.stderr)
        found = failures(junit) if junit.exists() else []
        tail = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "no output"
        seed = _SEED.search(run.stdout)  # tb/conftest.py prints the run's seed
        result = verdict(found) if run.returncode else "MISSED"
        summary[name] = {"verdict": result, "pytest": tail, "seed": seed and int(seed[1]),
                         "failed": [asdict(f) for f in found]}
        print(f"{result:8} {name}: {tail}" + (f" (seed {seed[1]})" if seed else ""), flush=True)
        # One line per failing test, its kind on each simulator, and one message.
        by_case: dict[str, list[Failure]] = {}
        for f in found:
            by_case.setdefault(f.case, []).append(f)
        for case, fs in sorted(by_case.items(), key=lambda kv: (kv[1][0].kind == "consequence",
                                                                  kv[0])):
            kinds = ", ".join(f"{f.sim} {f.kind}" for f in sorted(fs, key=lambda f: f.sim))
            print(f"    {case:52} {kinds:34} {fs[0].message[:100]}", flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    short = [f"{n} ({s['verdict']})" for n, s in summary.items() if s["verdict"] != "CAUGHT"]
    print(f"{len(summary) - len(short)}/{len(summary)} mutants caught by assertion on "
          f"{' and '.join(SIMULATORS)}" + (f"; NOT: {', '.join(short)}" if short else ""))
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
