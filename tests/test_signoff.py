"""The VM sign-off on every backend, with the same kernel modules, and its judge.

The boots: `qbridge.signoff.run_signoff` on the model backend and on the RTL backend
simulated by Icarus and by Verilator, over both transports (x-pci-proxy-dev on the host's
QEMU 7.2, vfio-user on QEMU 11.1 from the project's chroot).  The modules are built once
(qbridge.image caches them) and must be byte-identical for all six: the drivers are
unchanged between backends and transports.  The interrupt varies without adding boots:
rtl-icarus boots with INTx (pci=nomsi), the others with MSI, so vfio-user delivers both
kinds; the vfio-user boots of the model and of the RTL on Verilator also run rngtest
(run_signoff's default).  The judge
(`evaluate`) is also tested without a boot, on made-up runs, to show that each kind of
wrong result fails it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from qbridge import image
from qbridge.launch import Component, RunResult, Timeouts
from qbridge.signoff import (
    DEBUGCON_TEXT,
    HWRNG_BLOCK_BYTES,
    HWRNG_BYTES,
    HWRNG_PATH_DMA_INTX,
    HWRNG_PATH_DMA_MSI,
    HWRNG_PATH_DMA_POLLING,
    HWRNG_PATH_RNG64,
    NUMBERS,
    RNGTEST_BYTES,
    Check,
    evaluate,
    glibc_sequence,
    pack24,
    run_signoff,
    steps,
)

_FIRST_KO_DIGESTS: dict[str, str] = {}


def _ko_digests() -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest()
            for name, path in image.modules().items()}


def _failures(checks: list[Check]) -> str:
    return "\n".join(f"  {c.name}: {c.detail}" for c in checks if not c.passed)


@pytest.mark.parametrize("transport", ["proxy", "vfio-user"])
@pytest.mark.parametrize(("backend", "sim"), [("model", "icarus"), ("rtl", "icarus"),
                                              ("rtl", "verilator")],
                         ids=["model", "rtl-icarus", "rtl-verilator"])
def test_signoff_passes_with_the_same_modules(tmp_path: Path, backend: str, sim: str,
                                              transport: str,
                                              request: pytest.FixtureRequest) -> None:
    irq = "intx" if (backend, sim) == ("rtl", "icarus") else "msi"
    digests = _ko_digests()
    _FIRST_KO_DIGESTS.setdefault("ko", repr(digests))
    assert repr(digests) == _FIRST_KO_DIGESTS["ko"], \
        "the kernel modules differ between backends"
    # A cold Verilator build counts towards server_ready and run; a hung simulator (the
    # vCPU waits for it forever) ends at the run timeout.
    if (backend, transport) == ("model", "proxy"):  # the session's boot, also recorded
        shared = request.getfixturevalue("recorded_model_signoff")
        res, checks = shared.res, shared.checks
    else:
        res, checks = run_signoff(backend, sim, waves=False,
                                  out=tmp_path / f"vm-{backend}-{sim}",
                                  timeouts=Timeouts(server_ready=300.0, run=480.0),
                                  progress=False, transport=transport, irq=irq)
    assert res.transport == transport, res.transport
    want_qemu = "version 11.1" if transport == "vfio-user" else "version 7.2"
    assert want_qemu in res.qemu_version, f"{transport} ran {res.qemu_version!r}"
    assert all(c.passed for c in checks), (
        f"sign-off on {transport}/{backend}/{sim} failed:\n{_failures(checks)}\n"
        f"serial log tail:\n" + "\n".join(res.serial_lines[-25:]))
    assert _ko_digests() == digests, "the kernel modules were rebuilt during the run"


# The judge, on synthetic runs -------------------------------------------------------


def _good_serial(transport: str = "proxy", irq: str = "msi",
                 rngtest: bool = False) -> list[str]:
    """A correct run's serial lines, made from glibc (ctypes) and pack24."""
    total = HWRNG_BYTES + HWRNG_BLOCK_BYTES + (RNGTEST_BYTES if rngtest else 0)
    seq = glibc_sequence(0, NUMBERS + total // 3 + 1)
    stream = pack24(seq[NUMBERS:])
    transfers = 7
    irqs = transfers if transport == "vfio-user" else 0
    lines = ["COSIM-BEGIN"]
    for step in steps(rngtest):
        if step == "rng_ref":
            lines += [f"Round {r} number {i}: {seq[i]}" for r in range(2) for i in range(NUMBERS)]
        if step == "hwrng":
            lines.append(f"HWRNG-HEX {stream[:HWRNG_BYTES].hex()}")
            path = (HWRNG_PATH_DMA_POLLING if transport == "proxy" else
                    HWRNG_PATH_DMA_MSI if irq == "msi" else HWRNG_PATH_DMA_INTX)
            lines.append(f"HWRNG-PATH {path}")
        if step == "hwrng_block":
            block = stream[HWRNG_BYTES:HWRNG_BYTES + HWRNG_BLOCK_BYTES]
            lines.append(f"HWRNG-BLOCK {hashlib.sha256(block).hexdigest()} {len(block)}")
        if step == "rngtest":
            start = HWRNG_BYTES + HWRNG_BLOCK_BYTES
            data = stream[start:start + RNGTEST_BYTES]
            lines.append(f"RNGTEST-INPUT {hashlib.sha256(data).hexdigest()} {len(data)}")
            lines += ["RNGTEST rngtest: FIPS 140-2 successes: 1047",
                      "RNGTEST rngtest: FIPS 140-2 failures: 1"]
        if step == "dma_counters":
            nomsi = " pci=nomsi" if irq == "intx" else ""
            chip = "PCI-MSI 1048576-edge" if irq == "msi" else "IO-APIC  11-fasteoi"
            lines += [f"CMDLINE console=ttyS0 quiet{nomsi}",
                      f"DMA-COUNTERS transfers={transfers} errors=0 irqs={irqs}",
                      f"IRQ-LINE  24:  {irqs}  {chip}  my_rng"]
        lines.append(f"STEP {step} PASS")
    return [*lines, "COSIM-END rc=0"]


def _good_txlog(rngtest: bool = False, sim: bool = False) -> list[str]:
    """A correct run's transaction log, written out by hand in its documented layout
    (docs/transactions.md): each step's marker writes, then what the step does."""
    lines = ["# host time (UTC), simulation time, guest step, request [register] -> completion"]
    t = 0

    def add(step: str, tx: str) -> None:
        nonlocal t
        t += 10
        lines.append(f"17:03:{t // 1000 % 60:02d}.{t:06d} {f'{t}ns' if sim else '-'} {step} {tx}")

    add("boot", "CFG_READ tag=0 addr=0x0 be=0b1111 [VENDOR_DEVICE] -> CPL tag=0 SC "
                "data=0xcafe1234")
    add("boot", "CFG_WRITE tag=1 addr=0x10 be=0b1111 data=0xfebf1000 [BAR0] -> CPL tag=1 "
                "SC data=0x00000000")
    for step in [*steps(rngtest), "end"]:
        name = step.ljust(16).encode()
        for i in range(4):
            word = int.from_bytes(name[4 * i:4 * i + 4], "little")
            add(step, f"CFG_WRITE tag=2 addr={0xf0 + 4 * i:#x} be=0b1111 data={word:#010x} "
                      "[STEP_MARK] -> CPL tag=2 SC data=0x00000000")
        if step == "rng_ref":
            add(step, "MEM_WRITE tag=3 addr=0xfebf1004 be=0b1111 data=0x00000000 [SEED] "
                      "-> posted")
            add(step, "MEM_READ tag=4 addr=0xfebf1010 be=0b1111 [RNG64] -> CPL tag=4 SC "
                      "data=0x6b8b4567")
        if step == "hwrng":
            add(step, "DEV MEM_WRITE tag=0 addr=0x2a0000 be=0b1111 data=0x12345678 "
                      "[host memory] -> posted")
        if step == "debugcon_write":
            for i, byte in enumerate(DEBUGCON_TEXT):
                add(step, f"IO_WRITE tag={i} addr=0xe8 be=0b0010 data={byte << 8:#010x} "
                          f"[DEBUGCON] -> CPL tag={i} SC data=0x00000000")
    return lines


def _run(tmp_path: Path, serial: list[str], capture: bytes = DEBUGCON_TEXT,
         failed: Component | None = None, transport: str = "proxy",
         txlog: list[str] | None = None) -> RunResult:
    (tmp_path / "debugcon.bin").write_bytes(capture)
    if txlog is None:
        txlog = _good_txlog(rngtest="STEP rngtest PASS" in serial)
    (tmp_path / "txlog.txt").write_text("\n".join(txlog) + "\n")
    return RunResult(
        ok=failed is None, guest_rc=0 if failed is None else None, failed=failed,
        reason="" if failed is None else "made up", serial="\n".join(serial) + "\n",
        elapsed=1.0, out=tmp_path, serial_log=tmp_path / "serial.log",
        capture=tmp_path / "debugcon.bin", server_log=tmp_path / "server.log",
        server_stderr=tmp_path / "server.stderr", qemu_log=tmp_path / "qemu.log",
        txlog=tmp_path / "txlog.txt", transport=transport,
    )


def _failed_names(checks: list[Check]) -> set[str]:
    return {c.name for c in checks if not c.passed}


def test_judge_passes_a_correct_run(tmp_path: Path) -> None:
    checks = evaluate(_run(tmp_path, _good_serial()))
    assert not _failed_names(checks), f"a correct run failed:\n{_failures(checks)}"


def test_judge_fails_a_wrong_number(tmp_path: Path) -> None:
    serial = [ln.replace(": 846930886", ": 846930887") if ln.startswith("Round 1") else ln
              for ln in _good_serial()]
    failed = _failed_names(evaluate(_run(tmp_path, serial)))
    assert failed == {"rng_ref round 1 == glibc srand(0)", "rng_ref rounds identical"}, failed


def test_judge_fails_a_missing_step_and_a_failed_misuse_check(tmp_path: Path) -> None:
    serial = [ln for ln in _good_serial() if ln != "STEP rmmod_debugcon PASS"]
    serial.insert(3, "CHECK debugcon_second_open FAIL second open succeeded")
    failed = _failed_names(evaluate(_run(tmp_path, serial)))
    assert failed == {"guest rmmod_debugcon", "misuse debugcon_second_open"}, failed


def test_judge_fails_a_capture_with_extra_or_missing_bytes(tmp_path: Path) -> None:
    for capture in (DEBUGCON_TEXT + b"x", DEBUGCON_TEXT[:-1], b""):
        failed = _failed_names(evaluate(_run(tmp_path, _good_serial(), capture=capture)))
        assert failed == {"debugcon capture == written"}, (capture, failed)


# (transport, irq, rngtest) of the boots the suite makes, as the judge sees them.
_VARIANTS = [("proxy", "msi", False), ("proxy", "intx", False), ("vfio-user", "msi", True),
             ("vfio-user", "intx", False)]


@pytest.mark.parametrize(("transport", "irq", "rngtest"), _VARIANTS)
def test_judge_passes_a_correct_run_of_each_kind(tmp_path: Path, transport: str, irq: str,
                                                 rngtest: bool) -> None:
    run = _run(tmp_path, _good_serial(transport, irq, rngtest), transport=transport)
    checks = evaluate(run, irq=irq, rngtest=rngtest)
    assert not _failed_names(checks), f"a correct run failed:\n{_failures(checks)}"


def _edit(serial: list[str], prefix: str, new: str) -> list[str]:
    assert any(ln.startswith(prefix) for ln in serial), prefix
    return [new if ln.startswith(prefix) else ln for ln in serial]


def test_judge_fails_wrong_hwrng_bytes(tmp_path: Path) -> None:
    serial = [ln[:-2] + "00" if ln.startswith("HWRNG-HEX") else ln for ln in _good_serial()]
    failed = _failed_names(evaluate(_run(tmp_path, serial)))
    assert failed == {"hwrng bytes == pack24(glibc)"}, failed


def test_judge_fails_whole_32_bit_words_on_hwrng(tmp_path: Path) -> None:
    # The driver's old mapping (the numbers as 32-bit words) is glibc's stream too, but
    # not /dev/hwrng's: bit 31 always 0.
    words = b"".join(n.to_bytes(4, "little") for n in glibc_sequence(0, NUMBERS + 16)[NUMBERS:])
    serial = _edit(_good_serial(), "HWRNG-HEX", f"HWRNG-HEX {words.hex()}")
    failed = _failed_names(evaluate(_run(tmp_path, serial)))
    assert failed == {"hwrng bytes == pack24(glibc)"}, failed


def test_judge_fails_a_wrong_or_missing_block_digest(tmp_path: Path) -> None:
    good = next(ln for ln in _good_serial() if ln.startswith("HWRNG-BLOCK"))
    digest, size = good.split()[1:]
    for line in (f"HWRNG-BLOCK {digest[:-1]}0 {size}", f"HWRNG-BLOCK {digest} 65535",
                 "HWRNG-BLOCK-LOST"):
        serial = _edit(_good_serial(), "HWRNG-BLOCK", line)
        failed = _failed_names(evaluate(_run(tmp_path, serial)))
        assert failed == {"hwrng 64 KiB block sha256 == pack24(glibc)"}, (line, failed)


def test_judge_fails_rngtest_below_99_percent_or_missing(tmp_path: Path) -> None:
    good = _good_serial("vfio-user", "msi", rngtest=True)
    for ok, bad in ((1030, 18), (990, 0)):  # 98.3 %; 100 % of too few blocks
        serial = _edit(_edit(good, "RNGTEST rngtest: FIPS 140-2 successes",
                             f"RNGTEST rngtest: FIPS 140-2 successes: {ok}"),
                       "RNGTEST rngtest: FIPS 140-2 failures",
                       f"RNGTEST rngtest: FIPS 140-2 failures: {bad}")
        failed = _failed_names(evaluate(_run(tmp_path, serial, transport="vfio-user"),
                                        rngtest=True))
        assert failed == {"rngtest >= 99% of FIPS blocks pass"}, (ok, bad, failed)
    serial = [ln for ln in good if not ln.startswith(("RNGTEST", "STEP rngtest"))]
    failed = _failed_names(evaluate(_run(tmp_path, serial, transport="vfio-user",
                                         txlog=_good_txlog(rngtest=True)), rngtest=True))
    assert failed == {"guest rngtest", "rngtest input sha256 == pack24(glibc)",
                      "rngtest >= 99% of FIPS blocks pass"}, failed


def test_judge_fails_the_mmio_path_when_caps_advertises_dma(tmp_path: Path) -> None:
    for path in (HWRNG_PATH_RNG64, HWRNG_PATH_DMA_MSI, ""):  # proxy: polling expected
        serial = _edit(_good_serial(), "HWRNG-PATH", f"HWRNG-PATH {path}")
        failed = _failed_names(evaluate(_run(tmp_path, serial)))
        assert failed == {"hwrng path as CAPS and the transport allow"}, (path, failed)


def test_judge_fails_polling_or_the_other_interrupt_over_vfio_user(tmp_path: Path) -> None:
    for irq, path in (("msi", HWRNG_PATH_DMA_POLLING), ("msi", HWRNG_PATH_DMA_INTX),
                      ("intx", HWRNG_PATH_DMA_MSI)):
        serial = _edit(_good_serial("vfio-user", irq), "HWRNG-PATH", f"HWRNG-PATH {path}")
        failed = _failed_names(evaluate(_run(tmp_path, serial, transport="vfio-user"), irq=irq))
        assert failed == {"hwrng path as CAPS and the transport allow"}, (irq, path, failed)


def test_judge_fails_a_wrong_interrupt_count(tmp_path: Path) -> None:
    good = _good_serial("vfio-user", "msi")
    name_line = "/proc/interrupts: my_rng by msi, count == interrupts handled"
    cases = [
        # one interrupt missing in the driver's count (and so /proc/interrupts disagrees)
        ("DMA-COUNTERS", "DMA-COUNTERS transfers=7 errors=0 irqs=6",
         {"one interrupt per DMA transfer", name_line}),
        # the kernel counted one more than the driver handled
        ("IRQ-LINE", "IRQ-LINE  24:  8  PCI-MSI 1048576-edge  my_rng", {name_line}),
        # INTx although MSI was asked for
        ("IRQ-LINE", "IRQ-LINE  11:  7  IO-APIC  11-fasteoi  my_rng", {name_line}),
        ("IRQ-LINE", "IRQ-LINE ", {name_line}),
        # a failed transfer, or none at all
        ("DMA-COUNTERS", "DMA-COUNTERS transfers=7 errors=1 irqs=7",
         {"DMA transfers done, none failed"}),
        ("DMA-COUNTERS", "DMA-COUNTERS transfers=0 errors=0 irqs=0",
         {"DMA transfers done, none failed", name_line}),
    ]
    for prefix, line, want in cases:
        serial = _edit(good, prefix, line)
        failed = _failed_names(evaluate(_run(tmp_path, serial, transport="vfio-user")))
        assert failed == want, (line, failed)


def test_judge_fails_interrupts_handled_on_the_polled_proxy_path(tmp_path: Path) -> None:
    serial = _edit(_edit(_good_serial(), "DMA-COUNTERS",
                         "DMA-COUNTERS transfers=7 errors=0 irqs=7"),
                   "IRQ-LINE", "IRQ-LINE  24:  7  PCI-MSI 1048576-edge  my_rng")
    failed = _failed_names(evaluate(_run(tmp_path, serial)))
    assert failed == {"no interrupt handled (polled)"}, failed


def test_judge_fails_a_command_line_not_as_the_interrupt_asked(tmp_path: Path) -> None:
    serial = _good_serial("proxy", "intx")
    failed = _failed_names(evaluate(_run(tmp_path, serial), irq="msi"))
    assert failed == {"kernel command line asks for msi"}, failed
    serial = _edit(serial, "CMDLINE", "CMDLINE console=ttyS0 quiet")
    failed = _failed_names(evaluate(_run(tmp_path, serial), irq="intx"))
    assert failed == {"kernel command line asks for intx"}, failed


def test_judge_fails_a_component_failure_even_with_good_output(tmp_path: Path) -> None:
    failed = _failed_names(evaluate(_run(tmp_path, _good_serial(), failed=Component.SERVER)))
    assert failed == {"run (server, QEMU, kernel)"}, failed


def test_judge_passes_a_correct_txlog_with_simulation_times(tmp_path: Path) -> None:
    checks = evaluate(_run(tmp_path, _good_serial(), txlog=_good_txlog(sim=True)))
    assert not _failed_names(checks), f"a correct run failed:\n{_failures(checks)}"


def test_judge_fails_a_txlog_that_misattributes_or_lacks_stamps(tmp_path: Path) -> None:
    good = _good_txlog()
    order = "txlog: the guest's steps, marked in order"
    debugcon = "txlog: the debugcon bytes, in debugcon_write only"
    cases = [
        # a step never marked (its lines fall into the step before)
        ([ln.replace(" rmmod_my_rng ", " misuse ") for ln in good], {order}),
        # the debugcon bytes attributed to the step after theirs
        ([ln.replace(" debugcon_write ", " misuse ") for ln in good], {order, debugcon}),
        # one byte lost on the way
        ([ln for ln in good if "data=0x00006500 [DEBUGCON]" not in ln], {debugcon}),
        # no SEED write by the reference program, no DMA in hwrng
        ([ln for ln in good if "[SEED]" not in ln], {"txlog: rng_ref seeds the RNG"}),
        ([ln for ln in good if "DEV MEM_WRITE" not in ln],
         {"txlog: hwrng has the device write host memory"}),
        # a line without its host time stamp
        ([*good[:5], good[5].split(" ", 1)[1], *good[6:]],
         {"txlog: every line has a host time, a simulation time column, a step"}),
    ]
    for txlog, want in cases:
        failed = _failed_names(evaluate(_run(tmp_path, _good_serial(), txlog=txlog)))
        assert failed == want, (want, failed)
    (tmp_path / "txlog.txt").unlink()
    run = _run(tmp_path, _good_serial())
    run.txlog.unlink()
    failed = _failed_names(evaluate(run))
    assert failed == {"txlog attributes transactions to guest steps"}, failed
