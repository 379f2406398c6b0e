"""The testbench's first-mismatch checks and their bookkeeping, without a simulator.

The checks themselves are proven inside the simulations by planted faults
(tb.cases_planted, the planted cases of tb.cases_lockstep) and by tb.teeth's mutants; these
tests pin down the pure parts: the console comparator's rules, the reset read-back's
table (derived from the register map), and how tb.teeth tells an assertion from a timeout.
"""

from __future__ import annotations

import pytest

from models.contract.regmap import CONFIG_DWORDS, RNG_NEXT_DWORDS, RNG_REGISTERS
from models.contract.transaction import Space
from tb.access_mix import ConsoleCheck, ConsoleMismatch
from tb.reset_check import BAR0_RESET_VALUES, CONFIG_HEADER_SIZE, CONFIG_RESET_VALUES
from tb.teeth import MUTANTS, Failure, classify, verdict


def test_console_check_fails_at_the_first_wrong_byte_naming_its_write() -> None:
    check = ConsoleCheck()
    check.current = "access #7, write IO 0xe9/1"
    check.model_sink(b"ab")
    check.rtl_sink(b"a")
    with pytest.raises(ConsoleMismatch, match=r"#1 from the RTL is 0x63, the model expects "
                                              r"0x62 \(from access #7, write IO 0xe9/1\)"):
        check.rtl_sink(b"c")


def test_console_check_takes_rtl_bytes_before_the_model_has_them() -> None:
    # RtlEndpoint: the FIFO may put a byte out before the model has run its I/O write.
    check = ConsoleCheck()
    check.rtl_sink(b"x")
    assert check.missing == 0
    with pytest.raises(ConsoleMismatch, match=r"#0 from the RTL is 0x78, the model expects 0x79"):
        check.model_sink(b"y")


def test_console_check_complete_names_extra_and_missing_bytes() -> None:
    extra = ConsoleCheck()
    extra.model_sink(b"a")
    extra.rtl_sink(b"aa")
    with pytest.raises(ConsoleMismatch, match=r"byte #1 from the RTL is 0x61, with no I/O write"):
        extra.check_complete("at the end")
    missing = ConsoleCheck()
    missing.model_sink(b"ab")
    missing.rtl_sink(b"a")
    assert missing.missing == 1
    with pytest.raises(ConsoleMismatch, match=r"1 console bytes never came .* #1 = 0x62"):
        missing.check_complete("at the end")


def test_reset_read_back_covers_the_header_from_the_register_map() -> None:
    cfg = {rv.offset: rv.value for rv in CONFIG_RESET_VALUES}
    assert set(range(0, CONFIG_HEADER_SIZE, 4)) | set(CONFIG_DWORDS) == set(cfg)
    for off, value in cfg.items():
        dword = CONFIG_DWORDS.get(off)
        assert value == (dword.reset if dword else 0), f"config DW {off:#x}"
    assert all(rv.space is Space.CFG for rv in CONFIG_RESET_VALUES)


def test_reset_read_back_reads_no_register_that_advances() -> None:
    offsets = {rv.offset for rv in BAR0_RESET_VALUES}
    assert not offsets & set(RNG_NEXT_DWORDS), "reading RNG or RNG64 advances the generator"
    constants = {reg.offset: reg.value for reg in RNG_REGISTERS if reg.value is not None}
    for rv in BAR0_RESET_VALUES:
        assert rv.value == constants.get(rv.offset, 0), f"BAR0 DW {rv.offset:#x}"
    assert set(constants) <= offsets, "every constant register is read back"


@pytest.mark.parametrize(("test", "message", "kind"), [
    ("test_rtl_case_passes[icarus-RandomMixMatchesModel]",
     "AssertionError: RandomMixMatchesModel failed on icarus: AssertionError: 3 completions "
     "and 0 console bytes still pending after 200000 cycles", "timeout"),
    ("test_rtl_case_passes[verilator-endpoint_host_accesses_match_model]",
     "AssertionError: endpoint_host_accesses_match_model failed on verilator: TimeoutError: "
     "no completion for MEM_READ tag=3 addr=0x0 be=0b1111 within 100000 cycles", "timeout"),
    ("test_lean_case_passes[icarus-lean_host_accesses_match_model]",
     "AssertionError: lean_host_accesses_match_model failed on icarus: SimTimeoutError: ",
     "timeout"),
    # A case whose name says "times out" fails by assertion when its check fails.
    ("test_lean_case_passes[icarus-lean_slow_completion_times_out_instead_of_hanging]",
     "AssertionError: lean_slow_completion_times_out_instead_of_hanging failed on icarus: "
     "AssertionError: read during seeding returned 0x1 within 50 cycles", "assertion"),
    ("test_rtl_case_passes[icarus-RandomMixMatchesModel]",
     "AssertionError: RandomMixMatchesModel failed on icarus: Mismatch: cycle 9: console byte "
     "#3 is 0xbb, the model expects 0x44", "assertion"),
    ("test_rtl_case_passes[icarus-RandomMixMatchesModel]",
     "AssertionError: RandomMixMatchesModel failed on icarus: no result: did the simulator "
     "crash? see sim.log", "crash"),
    ("test_rtl_functional_coverage_is_complete[verilator]",
     "AssertionError: coverpoints with empty bins on verilator", "consequence"),
    ("test_the_same_seed_drives_the_same_stimulus_on_both_simulators_and_alone",
     "AssertionError: endpoint_host_accesses_match_model logged no stimulus line (sim.log)",
     "consequence"),
])
def test_teeth_tells_assertions_from_timeouts(test: str, message: str, kind: str) -> None:
    assert classify(test, message) == kind


def test_teeth_verdict_needs_an_assertion_on_every_simulator() -> None:
    def f(sim: str, kind: str) -> Failure:
        return Failure("t", sim, "case", kind, "")

    assert verdict([f("icarus", "assertion"), f("verilator", "assertion")]) == "CAUGHT"
    assert verdict([f("icarus", "assertion"), f("verilator", "timeout")]) == "WEAK"
    assert verdict([f("icarus", "timeout"), f("verilator", "timeout")]) == "TIMEOUT"
    assert verdict([f("icarus", "consequence"), f("verilator", "consequence")]) == "MISSED"


def test_teeth_mutants_still_apply_to_rtl() -> None:
    from models.contract.layout import REPO

    for name, (file, old, _) in MUTANTS.items():
        assert (REPO / "rtl" / file).read_text().count(old) == 1, f"mutant {name} is stale"
