"""Teeth check: does `pytest tb` fail when the RTL is broken?  A tool, not a test.

    python -m tb.teeth [MUTANT ...] [--out /tmp/cosim-teeth]

For each mutant: copy rtl/ to OUT/MUTANT/rtl, apply one textual mutation there (never in
the checkout), generate that copy's Verilog in a separate process (with the copy first on
the import path), and run `pytest tb` on it through COSIM_VERILOG / COSIM_TB_OUT.  A mutant
is "caught" when pytest fails.  The patches quote rtl/ source text: when the RTL changes
so a patch no longer applies, the tool says so instead of testing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from qbridge.childenv import child_env

from models.contract.layout import REPO

__all__ = ["MUTANTS", "main"]

# name -> (file in rtl/, original text, mutated text)
MUTANTS: dict[str, tuple[str, str, str]] = {
    "tap_position": ("rng.py", "feedback.eq(s[DEGREE - SEPARATION] + s[0])",
                     "feedback.eq(s[DEGREE - SEPARATION - 1] + s[0])"),
    "discard_count": ("rng.py", "count.eq(DISCARD - 1)]", "count.eq(DISCARD - 2)]"),
    "seed0_rule": ("rng.py", "shift_in.eq(Mux(bus.w_data == 0, 1, bus.w_data))",
                   "shift_in.eq(bus.w_data)"),
    "large_seed_sign": ("rng.py", "w.eq(Mux(word[31], word - 2, word))", "w.eq(word)"),
    "read_not_held_while_seeding": ("rng.py",
                                    "bus.ack.eq(Mux(rd_next, phase == Phase.READY, bus.stb))",
                                    "bus.ack.eq(bus.stb)"),
    # RNG64's high DW (0x14) returns a number but does not advance the generator.
    "rng64_high_dw_no_step": ("rng.py", "with m.Elif(rd_next):  #",
                              "with m.Elif(rd_next & (reg != 0x14 >> 2)):  #"),
    "bar_size_mask": ("config.py", "mask = dword.writable  #",
                      "mask = dword.writable | (0x800 if dword.name == 'BAR0' else 0)  #"),
    "command_gating": ("top.py", "& (cfg.command & COMMAND_MEMORY).any()", "& 1"),
    "debugcon_drop_when_full": ("debugcon.py",
                                "bus.ack.eq(bus.stb & (~bus.we | fifo.w_rdy))",
                                "bus.ack.eq(bus.stb)"),
    "completion_tag": ("top.py", 'self.cpl.tag.eq(fields["tag"])',
                       'self.cpl.tag.eq(fields["tag"][:7])'),
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
    "seed_write_alias": ("rng.py", '(reg == _REG["SEED"].offset >> 2) & (bus.be == 0xF)',
                         '(reg[:6] == _REG["SEED"].offset >> 2) & (bus.be == 0xF)'),
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
}

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
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tb"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
        )
        (work / "pytest.txt").write_text(run.stdout + run.stderr)
        failed = [line.split(" - ")[0].removeprefix("FAILED ")
                  for line in run.stdout.splitlines() if line.startswith("FAILED")]
        tail = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "no output"
        summary[name] = {"caught": run.returncode != 0, "pytest": tail, "failed": failed}
        print(f"{'CAUGHT ' if run.returncode else 'MISSED '} {name}: {tail}", flush=True)
        for test in failed:
            print(f"          {test}", flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    missed = [n for n, s in summary.items() if not s["caught"]]
    print(f"{len(summary) - len(missed)}/{len(summary)} mutants caught"
          + (f"; MISSED: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
