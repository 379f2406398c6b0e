"""The committed C header and docs/registers.md are what models/contract/regmap.py renders today."""

from __future__ import annotations

from models.contract import regmap_gen
from models.contract.layout import REPO


def test_generated_files_are_not_stale() -> None:
    stale = [str(p.relative_to(REPO)) for p in regmap_gen.stale()]
    assert not stale, f"stale generated files {stale}: run `make regmap` and commit"


def test_c_header_carries_the_identity_and_register_offsets() -> None:
    text = regmap_gen.render_c_header()
    for needle in ("COSIM_PCI_VENDOR_ID\t\t0x1234", "COSIM_PCI_DEVICE_ID\t\t0xcafe",
                   "COSIM_RNG_REG_RNG\t\t0x0", "COSIM_RNG_REG_SEED\t\t0x4",
                   "COSIM_RNG_REG_CAPS\t\t0xc", "COSIM_RNG_REG_RNG64\t\t0x10",
                   "COSIM_RNG_CAPS_RNG64\t\t0x1",
                   "COSIM_DEBUGCON_PORT\t\t0xe9"):
        assert needle in text, f"{needle!r} missing from the C header"


def test_c_header_lines_fit_80_columns() -> None:
    # Kernel style (checkpatch --strict, linux-driver/checkpatch.sh): tabs are 8 columns.
    long = [(n, ln) for n, ln in enumerate(regmap_gen.render_c_header().splitlines(), 1)
            if len(ln.expandtabs(8)) > 80]
    assert not long, f"C header lines over 80 columns: {long}"
