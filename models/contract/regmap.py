"""The register map: the single source for the RTL, the models, the C header and the docs.

`rtl/` builds its config space and BAR0 decode from these tables, `models/` its golden
models, and `models/contract/regmap_gen.py` renders `linux-driver/cosim_regs.h` and
`docs/registers.md` from them (`make regmap`; a test fails when those files are stale).

Ref: PCI Local Bus Specification 3.0, 6.1 (type-0 configuration header layout),
6.2.2 (Command register), 6.2.3 (Status register), 6.2.5.1 (BAR sizing), 6.7
(capabilities list), 6.8.1 (MSI capability structure).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "BAR0_SIZE",
    "BAR0_TEST_BASE",
    "CAPS_BITS",
    "CAPS_DMA",
    "CAPS_RNG64",
    "CAP_POINTER",
    "COMMAND_INTX_DISABLE",
    "COMMAND_IO",
    "COMMAND_MASTER",
    "COMMAND_MEMORY",
    "COMMAND_WRITABLE",
    "CONFIG_DWORDS",
    "CONFIG_SPACE_SIZE",
    "ConfigDword",
    "DMA_CTRL_IRQ_EN",
    "DMA_CTRL_START",
    "DMA_MAX_LEN",
    "DMA_STATUS_BUSY",
    "DMA_STATUS_DONE",
    "DMA_STATUS_ERROR",
    "INT_STATUS_DMA",
    "MSI_CAP",
    "MSI_CONTROL_64BIT",
    "MSI_CONTROL_ENABLE",
    "STATUS_CAP_LIST",
    "STATUS_INTERRUPT",
    "STEP_MARK",
    "STEP_MARK_SIZE",
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
# STATUS bits (PCI 3.0 6.2.3), as bits of the COMMAND_STATUS DW.  Interrupt Status is the
# device's INTx condition whatever Interrupt Disable says (6.2.3: "the state of the
# interrupt in the device/function"); Capabilities List says 0x34 points at a list.
STATUS_INTERRUPT = 1 << (16 + 3)
STATUS_CAP_LIST = 1 << (16 + 4)

# The capabilities list (PCI 3.0 6.7): one MSI capability (6.8.1), 64-bit message
# address, one vector, no per-vector masking.  QEMU's vfio-user client virtualises it and
# still forwards every config write, so the device sees the address and data the guest
# programmed and sends its MSI as a memory write there (PCIe 4.0 6.1.4).
CAP_POINTER = 0x34
MSI_CAP = 0x40
MSI_CAP_ID = 0x05
MSI_CONTROL_ENABLE = 1 << 16  # Message Control bit 0, as a bit of the capability's DW 0
MSI_CONTROL_MME = 0x7 << 20  # Multiple Message Enable: writable, only 1 vector is used
MSI_CONTROL_64BIT = 1 << 23  # 64-bit message address capable


@dataclass(frozen=True)
class ConfigDword:
    """One DW of config space: its value after reset, and which bits software can write.

    Bits outside `writable` are read-only; a write changes exactly the writable bits of
    the enabled bytes.  `live` bits are not stored: they read the device's state (STATUS
    Interrupt Status).  STATUS has no RW1C bits set ever (no errors are signalled).  DWs
    not listed read 0 and ignore writes.
    """

    name: str
    reset: int
    writable: int
    doc: str
    live: int = 0


def _config_dwords(ident: Identity) -> dict[int, ConfigDword]:
    bar0_mask = ~(BAR0_SIZE - 1) & 0xFFFF_FFFF  # address bits; bits 3:0 = 0 (mem, 32-bit, NP)
    return {
        0x00: ConfigDword("VENDOR_DEVICE", ident.device << 16 | ident.vendor, 0,
                          "Vendor ID [15:0], Device ID [31:16]"),
        0x04: ConfigDword("COMMAND_STATUS", STATUS_CAP_LIST, COMMAND_WRITABLE,
                          "Command [15:0] (IO, MEM, MASTER, PARITY, SERR, INTX_DISABLE "
                          "writable); Status [31:16]: bit 19 Interrupt Status (INTx "
                          "pending, whatever INTX_DISABLE says), bit 20 Capabilities List "
                          "= 1, others 0", live=STATUS_INTERRUPT),
        0x08: ConfigDword("CLASS_REVISION", ident.class_code << 8 | ident.revision, 0,
                          "Revision ID [7:0], Class Code [31:8]"),
        0x0C: ConfigDword("HEADER", 0, 0,
                          "Cache line, latency timer, header type 0 (single function), BIST"),
        0x10: ConfigDword("BAR0", 0, bar0_mask,
                          f"BAR0: {BAR0_SIZE // 1024} KiB 32-bit non-prefetchable memory; "
                          "writing all-ones reads back the size mask"),
        0x2C: ConfigDword("SUBSYSTEM", ident.subsystem << 16 | ident.subsystem_vendor, 0,
                          "Subsystem Vendor ID [15:0], Subsystem ID [31:16]"),
        CAP_POINTER: ConfigDword("CAP_POINTER", MSI_CAP, 0,
                                 f"Capabilities Pointer [7:0] = {MSI_CAP:#x} (the MSI "
                                 "capability)"),
        0x3C: ConfigDword("INTERRUPT", ident.interrupt_pin << 8, 0xFF,
                          "Interrupt Line [7:0] read/write, Interrupt Pin [15:8] = INTA"),
        MSI_CAP: ConfigDword("MSI_CONTROL", MSI_CONTROL_64BIT | MSI_CAP_ID,
                             MSI_CONTROL_ENABLE | MSI_CONTROL_MME,
                             "MSI: Capability ID [7:0] = 0x05, Next [15:8] = 0 (last), "
                             "Message Control [31:16]: bit 16 MSI Enable, bits 22:20 "
                             "Multiple Message Enable writable; one vector (bits 19:17 = 0), "
                             "64-bit address (bit 23), no masking"),
        MSI_CAP + 0x4: ConfigDword("MSI_ADDRESS", 0, 0xFFFF_FFFC,
                                   "MSI Message Address [31:2] (DW aligned)"),
        MSI_CAP + 0x8: ConfigDword("MSI_ADDRESS_HI", 0, 0xFFFF_FFFF,
                                   "MSI Message Upper Address [63:32]"),
        MSI_CAP + 0xC: ConfigDword("MSI_DATA", 0, 0xFFFF,
                                   "MSI Message Data [15:0]; the message is a DW memory "
                                   "write of this value (zero-extended) to the address"),
    }


CONFIG_DWORDS: dict[int, ConfigDword] = _config_dwords(IDENTITY)

# Config DWs 0xf0-0xff: a window reserved for software's step markers.  The device treats
# it as every DW not listed (reads 0, ignores writes), so marking costs it nothing; the
# bridge's transaction log reads the 16 ASCII bytes a guest writes there (DW by DW, the
# DW at 0xfc last, as one 16-byte write of the sysfs `config` file comes) as the name of
# the step that follows, and attributes every later transaction to it.  Config space,
# not BAR0: the guest can write it before a driver enables memory decoding and after one
# unbinds, and the write never waits behind a DMA transfer.
STEP_MARK = 0xF0
STEP_MARK_SIZE = 16


class Access(Enum):
    R = "R"  # reads have an effect or a value; writes are ignored
    W = "W"  # writes have an effect; reads return 0
    RO = "RO"  # constant, or the device's state; writes are ignored
    RW = "RW"  # the `writable` bits hold what software wrote; other bits read 0
    RW1C = "RW1C"  # set by the device; writing 1 to a `writable` bit clears it


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
    writable: int = 0  # RW: the bits that hold what was written; RW1C: the clearable bits
    reset: int = 0  # the value after reset of a register that holds state (RW, RW1C, RO)
    bits: tuple[tuple[str, int], ...] = ()  # named bits (name, mask) for the C header, docs

    @property
    def dwords(self) -> tuple[int, ...]:
        """The offsets of the DWs this register covers, lowest first."""
        return tuple(range(self.offset, self.offset + self.size, 4))


RNG_ID_VALUE = 0x524E_4701  # "RNG" in the top three bytes, interface version 1 in [7:0]

# CAPS bits: features software may use when set.  A device without CAPS reads 0 at its
# offset (an unused offset), which means "none of them": drivers stay compatible.
CAPS_RNG64 = 1 << 0  # the 64-bit random register RNG64 exists
CAPS_DMA = 1 << 1  # the DMA engine (DMA_* and INT_STATUS) and its interrupt exist
CAPS_BITS: dict[str, int] = {"RNG64": CAPS_RNG64, "DMA": CAPS_DMA}
RNG_CAPS_VALUE = CAPS_RNG64 | CAPS_DMA

# The DMA engine (docs/dma.md).  A transfer writes DMA_LEN bytes of the generator's
# stream -- the numbers RNG reads would have returned, in the same order, little-endian,
# 4 bytes each -- to host memory at DMA_ADDR, as posted memory writes of one DW each
# (the last with the byte enables of its remaining bytes; its number's other bytes are
# consumed but not written), then a flush read of the last DW written on each 4 KiB page
# (a read completion may not pass posted writes, PCIe 4.0 2.4.1, so its arrival says the
# writes landed; an unsupported-request completion says the host refused the page).
DMA_MAX_LEN = 1 << 20  # longer transfers end at once with ERROR, nothing written
DMA_CTRL_START = 1 << 0  # write 1: start a transfer (reads 0)
DMA_CTRL_IRQ_EN = 1 << 1  # interrupt when a transfer ends
DMA_STATUS_BUSY = 1 << 0
DMA_STATUS_DONE = 1 << 1  # the last transfer wrote all its bytes
DMA_STATUS_ERROR = 1 << 2  # the last transfer stopped: too long, Bus Master off, refused
INT_STATUS_DMA = 1 << 0  # a transfer ended (with IRQ_EN): the interrupt condition

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
             "Capabilities: bit 0 RNG64 (the 64-bit random register at 0x10 exists), bit 1 "
             "DMA (the DMA engine at 0x20-0x37 and its interrupt exist); other bits 0. "
             "Devices without CAPS read 0 here: neither.", RNG_CAPS_VALUE),
    Register("RNG64", 0x10, Access.R,
             "Two numbers per 8-byte read: each of its DWs reads as RNG does (the next "
             "number, advancing the generator, late while seeding). An 8-byte read is the "
             "DW at 0x10 then the one at 0x14, so it returns rand_n in [31:0] and "
             "rand_n+1 in [63:32]: the little-endian byte stream is that of 4-byte RNG "
             "reads. A DW read of 0x10 or 0x14 alone returns the next number too. "
             "Writes are ignored.", size=8, next_number=True),
    Register("DMA_ADDR", 0x20, Access.RW,
             "DMA buffer address in host memory, 64-bit, DW aligned (bits 1:0 read 0). "
             "Read when a transfer starts: changing it while busy affects the next one.",
             size=8, writable=0xFFFF_FFFF_FFFF_FFFC),
    Register("DMA_LEN", 0x28, Access.RW,
             f"Transfer length in bytes; 0 ends at once (DONE, nothing written); more than "
             f"{DMA_MAX_LEN:#x} ends at once with ERROR, nothing written.",
             writable=0xFFFF_FFFF),
    Register("DMA_CTRL", 0x2C, Access.RW,
             "Bit 0 START (write 1 to start a transfer; reads 0), bit 1 IRQ_EN (interrupt "
             "when the transfer ends; taken at START). A write while BUSY waits until the "
             "transfer ends: a START while busy starts the next transfer then.",
             writable=DMA_CTRL_IRQ_EN,
             bits=(("START", DMA_CTRL_START), ("IRQ_EN", DMA_CTRL_IRQ_EN))),
    Register("DMA_STATUS", 0x30, Access.RO,
             "Bit 0 BUSY, bit 1 DONE (the last transfer wrote all its bytes), bit 2 ERROR "
             "(it stopped: too long, COMMAND.MASTER clear, or a page refused by the host). "
             "START clears DONE and ERROR. While BUSY, SEED writes, reads of numbers and "
             "writes of DMA_CTRL and INT_STATUS wait until the transfer ends, so the stream "
             "stays in order; BUSY is the only state a host sees change without its own "
             "requests.",
             bits=(("BUSY", DMA_STATUS_BUSY), ("DONE", DMA_STATUS_DONE),
                   ("ERROR", DMA_STATUS_ERROR))),
    Register("INT_STATUS", 0x34, Access.RW1C,
             "Bit 0 DMA: a transfer ended with IRQ_EN set; write 1 to clear (waits while "
             "BUSY). While set the "
             "device signals its interrupt: one MSI message when MSI is enabled (and "
             "COMMAND.MASTER), else INTx unless COMMAND.INTX_DISABLE.",
             writable=INT_STATUS_DMA, bits=(("DMA", INT_STATUS_DMA),)),
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
