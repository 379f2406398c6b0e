"""Type-0 PCI configuration header, built from `CONFIG_DWORDS` of models/contract/regmap.py.

Each listed DW holds its reset value; a write changes exactly its writable bits in the
enabled byte lanes; `live` bits (STATUS Interrupt Status) read the device's state instead.
DWs not listed, and every offset >= 0x100, read 0 and ignore writes.  Every access
completes in the cycle it is strobed (`ack = stb`).

Ref: PCI Local Bus Specification 3.0, 6.1 (type-0 header), 6.2.2 (Command), 6.2.3
(Status), 6.2.5.1 (BAR sizing: the address bits below the BAR size are read-only 0),
6.8.1 (MSI capability).
"""


from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from models.contract.regmap import (
    CONFIG_DWORDS,
    CONFIG_SPACE_SIZE,
    MSI_CAP,
    MSI_CONTROL_ENABLE,
    STATUS_INTERRUPT,
)
from rtl.transaction import AccessSignature

__all__ = ["Header"]

_OFFSET = {dword.name: offset for offset, dword in CONFIG_DWORDS.items()}


class Header(wiring.Component):
    """The config space function.

    Members
    -------
    bus : In(AccessSignature(64))
        Config accesses; `addr` is the config register offset (any 64-bit value).
    command : Out(16)
        The Command register, updated on the rising edge that ends an acknowledged write.
    bar0 : Out(32)
        The BAR0 register (address bits only, low bits 0), same timing as `command`.
    interrupt : In(1)
        The INTx condition, read as STATUS Interrupt Status (combinationally).
    msi_enable : Out(1)
        MSI Enable of the MSI capability, same timing as `command`.
    msi_address : Out(64)
        The MSI Message Address (upper and lower DW), same timing as `command`.
    msi_data : Out(16)
        The MSI Message Data, same timing as `command`.
    """

    bus: In(AccessSignature(64))
    command: Out(16)
    bar0: Out(32)
    interrupt: In(1)
    msi_enable: Out(1)
    msi_address: Out(64)
    msi_data: Out(16)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        bus = self.bus

        # Byte enables widened to a bit mask of the enabled lanes.
        lanes = Cat(bus.be[i].replicate(8) for i in range(4))
        in_range = bus.addr[8:] == 0  # offsets >= 0x100 (and beyond 32 bits) read 0
        assert CONFIG_SPACE_SIZE == 0x100

        # One register per DW; bits outside the writable mask keep their reset value.
        regs: dict[int, Signal] = {}
        for offset, dword in CONFIG_DWORDS.items():
            reg = Signal(32, init=dword.reset, name=dword.name.lower())
            regs[offset] = reg
            mask = dword.writable  # per-bit writable mask (BAR0: the size mask 0xfffff000)
            if mask:
                with m.If(bus.stb & bus.we & in_range & (bus.addr[2:8] == offset >> 2)):
                    m.d.sync += reg.eq((reg & ~(lanes & mask)) | (bus.w_data & lanes & mask))

        m.d.comb += bus.ack.eq(bus.stb)
        with m.If(in_range & ~bus.we):
            with m.Switch(bus.addr[2:8]):
                for offset, reg in regs.items():
                    with m.Case(offset >> 2):
                        live = CONFIG_DWORDS[offset].live
                        if live == STATUS_INTERRUPT:
                            m.d.comb += bus.r_data.eq(reg | self.interrupt.replicate(32)
                                                      & live)
                        else:
                            assert not live, f"no source for live bits {live:#x}"
                            m.d.comb += bus.r_data.eq(reg)

        m.d.comb += [
            self.command.eq(regs[_OFFSET["COMMAND_STATUS"]][:16]),
            self.bar0.eq(regs[_OFFSET["BAR0"]]),
            self.msi_enable.eq((regs[MSI_CAP] & MSI_CONTROL_ENABLE).any()),
            self.msi_address.eq(Cat(regs[MSI_CAP + 4], regs[MSI_CAP + 8])),
            self.msi_data.eq(regs[MSI_CAP + 0xC][:16]),
        ]
        return m
