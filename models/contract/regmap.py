"""The register map: the single source for the RTL, the models, the C header and the docs.

`rtl/` builds its config space and BAR0 decode from these tables, `models/` its golden
models, and `models/contract/regmap_gen.py` renders `linux-driver/cosim_regs.h` and
`docs/registers.md` from them (`make regmap`; a test fails when those files are stale).

Ref: PCI Local Bus Specification 3.0, 6.1 (type-0 configuration header layout),
6.2.2 (Command register), 6.2.5.1 (BAR sizing).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "BAR0_SIZE",
    "BAR0_TEST_BASE",
    "CAPS_BITS",
    "CAPS_RNG64",
    "CONFIG_DWORDS",
    "CONFIG_SPACE_SIZE",
    "COMMAND_MEMORY",
    "COMMAND_WRITABLE",
    "ConfigDword",
    "DEBUGCON_PORT",
    "DEBUGCON_READ_VALUE",
    "Access",
    "IDENTITY",
    "RNG_CAPS_VALUE",
    "RNG_ID_VALUE",
    "RNG_NEXT_DWORDS",
    "RNG_REGISTERS",
    "Register",
    "rng_register_at",
]


@dataclass(frozen=True)
class Identity:
    vendor: int = 0x1234
    device: int = 0xCAFE
    revision: int = 0x10
    class_code: int = 0x00FF00  # base 0x00, sub-class 0xff, prog-if 0x00 (unclassified)
    subsystem_vendor: int = 0x1AF4
    subsystem: int = 0x1100
    interrupt_pin: int = 1  # INTA#


IDENTITY = Identity()

BAR0_SIZE = 0x1000  # 4 KiB, 32-bit, non-prefetchable memory
# Where tests, benchmarks and the testbench program BAR0: the address QEMU's `pc` machine
# gave it in measured boots, so their traffic looks like a guest's.  Not a device fact:
# the device decodes whatever BAR0 holds.
BAR0_TEST_BASE = 0xFEBF_1000
CONFIG_SPACE_SIZE = 0x100  # conventional config space; offsets beyond read 0

# COMMAND bits software may set (PCI 3.0 6.2.2): I/O space, memory space, bus master,
# parity error response, SERR# enable, interrupt disable.  Other bits read 0.
COMMAND_IO = 1 << 0
COMMAND_MEMORY = 1 << 1
COMMAND_MASTER = 1 << 2
COMMAND_PARITY = 1 << 6
COMMAND_SERR = 1 << 8
COMMAND_INTX_DISABLE = 1 << 10
COMMAND_WRITABLE = (
    COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_PARITY | COMMAND_SERR
    | COMMAND_INTX_DISABLE
)


@dataclass(frozen=True)
class ConfigDword:
    """One DW of config space: its value after reset, and which bits software can write.

    Bits outside `writable` are read-only; a write changes exactly the writable bits of
    the enabled bytes.  STATUS has no RW1C bits set ever (no errors are signalled), so it
    is read-only 0.  DWs not listed read 0 and ignore writes.
    """

    name: str
    reset: int
    writable: int
    doc: str


def _config_dwords(ident: Identity) -> dict[int, ConfigDword]:
    bar0_mask = ~(BAR0_SIZE - 1) & 0xFFFF_FFFF  # address bits; bits 3:0 = 0 (mem, 32-bit, NP)
    return {
        0x00: ConfigDword("VENDOR_DEVICE", ident.device << 16 | ident.vendor, 0,
                          "Vendor ID [15:0], Device ID [31:16]"),
        0x04: ConfigDword("COMMAND_STATUS", 0, COMMAND_WRITABLE,
                          "Command [15:0] (IO, MEM, MASTER, PARITY, SERR, INTX_DISABLE "
                          "writable), Status [31:16] reads 0"),
        0x08: ConfigDword("CLASS_REVISION", ident.class_code << 8 | ident.revision, 0,
                          "Revision ID [7:0], Class Code [31:8]"),
        0x0C: ConfigDword("HEADER", 0, 0,
                          "Cache line, latency timer, header type 0 (single function), BIST"),
        0x10: ConfigDword("BAR0", 0, bar0_mask,
                          f"BAR0: {BAR0_SIZE // 1024} KiB 32-bit non-prefetchable memory; "
                          "writing all-ones reads back the size mask"),
        0x2C: ConfigDword("SUBSYSTEM", ident.subsystem << 16 | ident.subsystem_vendor, 0,
                          "Subsystem Vendor ID [15:0], Subsystem ID [31:16]"),
        0x3C: ConfigDword("INTERRUPT", ident.interrupt_pin << 8, 0xFF,
                          "Interrupt Line [7:0] read/write, Interrupt Pin [15:8] = INTA"),
    }


CONFIG_DWORDS: dict[int, ConfigDword] = _config_dwords(IDENTITY)


class Access(Enum):
    R = "R"  # reads have an effect or a value; writes are ignored
    W = "W"  # writes have an effect; reads return 0
    RO = "RO"  # constant; writes are ignored


@dataclass(frozen=True)
class Register:
    """One register of BAR0.

    `size` is 4 or 8 bytes; an 8-byte register is two DWs, lower offset first, each of
    them a request of its own (`models.contract.transaction.Host` splits 8-byte accesses that
    way).  `next_number`: every read of any of its DWs returns the next number of the
    generator and advances it (whatever the byte enables), completing late while seeding.
    """

    name: str
    offset: int
    access: Access
    doc: str
    value: int | None = None  # for constant registers
    size: int = 4
    next_number: bool = False

    @property
    def dwords(self) -> tuple[int, ...]:
        """The offsets of the DWs this register covers, lowest first."""
        return tuple(range(self.offset, self.offset + self.size, 4))


RNG_ID_VALUE = 0x524E_4701  # "RNG" in the top three bytes, interface version 1 in [7:0]

# CAPS bits: features software may use when set.  A device without CAPS reads 0 at its
# offset (an unused offset), which means "none of them": drivers stay compatible.
CAPS_RNG64 = 1 << 0  # the 64-bit random register RNG64 exists
CAPS_BITS: dict[str, int] = {"RNG64": CAPS_RNG64}
RNG_CAPS_VALUE = CAPS_RNG64

RNG_REGISTERS: tuple[Register, ...] = (
    Register("RNG", 0x0, Access.R,
             "Each read returns the next number of glibc's rand() sequence and advances it. "
             "Any read of this DW advances, whatever its byte enables; the completion "
             "carries the whole number. A read while seeding completes when ready. "
             "Writes are ignored.", next_number=True),
    Register("SEED", 0x4, Access.W,
             "A write with all four byte enables seeds the generator as glibc's "
             "srand(value); a partial write is ignored. Reads return 0."),
    Register("ID", 0x8, Access.RO,
             "Device identification: 'RNG' in [31:8], register interface version in [7:0].",
             RNG_ID_VALUE),
    Register("CAPS", 0xC, Access.RO,
             "Capabilities: bit 0 RNG64 (the 64-bit random register at 0x10 exists); other "
             "bits 0. Devices without CAPS read 0 here: no RNG64.", RNG_CAPS_VALUE),
    Register("RNG64", 0x10, Access.R,
             "Two numbers per 8-byte read: each of its DWs reads as RNG does (the next "
             "number, advancing the generator, late while seeding). An 8-byte read is the "
             "DW at 0x10 then the one at 0x14, so it returns rand_n in [31:0] and "
             "rand_n+1 in [63:32]: the little-endian byte stream is that of 4-byte RNG "
             "reads. A DW read of 0x10 or 0x14 alone returns the next number too. "
             "Writes are ignored.", size=8, next_number=True),
)
# Every other offset of BAR0 reads 0 and ignores writes (successful completion).

# The DW offsets whose reads return the next number (RNG, both DWs of RNG64).
RNG_NEXT_DWORDS: tuple[int, ...] = tuple(
    dw for reg in RNG_REGISTERS if reg.next_number for dw in reg.dwords)


def rng_register_at(offset: int) -> Register | None:
    """The register whose DWs include the DW holding byte `offset` of BAR0, if any."""
    for reg in RNG_REGISTERS:
        if offset & ~3 in reg.dwords:
            return reg
    return None


# debugcon (QEMU isa-debugcon): one byte-wide port.  In the transaction interface it is
# byte lane 1 of the I/O DW at 0xe8.
DEBUGCON_PORT = 0xE9
DEBUGCON_READ_VALUE = 0xE9  # what QEMU's device returns, so software can detect it
