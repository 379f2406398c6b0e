"""Stream and access signatures of the RTL, derived from the transaction interface.

The `req`/`cpl` stream members are generated from `REQUEST_FIELDS` / `COMPLETION_FIELDS`
of `models/contract/transaction.py`, so widths and Verilog port names (`req__kind`, ...) are
defined in one place.  Members are flat (no payload struct) so each field is its own port.

Handshake of every stream (docs/transactions.md): a beat transfers on a rising edge where
`valid` and `ready` are both high; once `valid` is raised it stays high, with stable
fields, until the beat transfers; `valid` never depends combinationally on `ready`.

`AccessSignature` is the device's internal bus from the top's request decoder to each
function (config header, RNG, debugcon), Wishbone-classic-like: `stb` is held with stable
fields until the cycle in which the function raises `ack`, and the function acts exactly
in that cycle.

Ref: PCI Express Base Specification 4.0, 2.2 (TLPs, simplified to single-DW requests).
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from models.contract.transaction import COMPLETION_FIELDS, CONSOLE_FIELDS, REQUEST_FIELDS

__all__ = ["AccessSignature", "ByteStreamSignature", "CompletionSignature", "RequestSignature"]


class RequestSignature(wiring.Signature):
    """Request stream, host -> device (from the host's point of view).

    Members
    -------
    valid : Out(1)
        A request is offered; stays high with stable fields until `valid & ready`.
    ready : In(1)
        The device accepts the request on the rising edge where `valid & ready`.
    kind, tag, addr, be, data : Out(width from `REQUEST_FIELDS`)
        The request fields, valid while `valid` is high.
    """

    def __init__(self) -> None:
        members = {"valid": Out(1), "ready": In(1)}
        members.update({name: Out(width) for name, width in REQUEST_FIELDS.items()})
        super().__init__(members)


class CompletionSignature(wiring.Signature):
    """Completion stream, device -> host (from the device's point of view).

    Members
    -------
    valid : Out(1)
        A completion is offered; stays high with stable fields until `valid & ready`.
    ready : In(1)
        The host takes the completion on the rising edge where `valid & ready`.
    tag, status, data : Out(width from `COMPLETION_FIELDS`)
        The completion fields, valid while `valid` is high.
    """

    def __init__(self) -> None:
        members = {"valid": Out(1), "ready": In(1)}
        members.update({name: Out(width) for name, width in COMPLETION_FIELDS.items()})
        super().__init__(members)


class ByteStreamSignature(wiring.Signature):
    """A stream of bytes (the debugcon output), from the producer's point of view.

    Members
    -------
    valid : Out(1)
        `data` holds a byte; stays high with stable `data` until `valid & ready`.
    ready : In(1)
        The sink takes the byte on the rising edge where `valid & ready`.
    data : Out(width from `CONSOLE_FIELDS`)
        The byte, valid while `valid` is high.
    """

    def __init__(self) -> None:
        members = {"valid": Out(1), "ready": In(1)}
        members.update({name: Out(width) for name, width in CONSOLE_FIELDS.items()})
        super().__init__(members)


class AccessSignature(wiring.Signature):
    """Internal single-DW access bus from the top to one function (initiator's view).

    Members
    -------
    stb : Out(1)
        An access is requested; stays high with stable fields up to and including the
        cycle where `ack` is high, and is low in the cycle after it.
    we : Out(1)
        The access is a write (valid with `stb`).
    addr : Out(addr_width)
        Byte offset of the DW inside the function's space, DW aligned (valid with `stb`);
        absent when `addr_width` is 0 (a function of a single DW).
    be : Out(4)
        Byte enables, bit i = byte lane i (valid with `stb`).
    w_data : Out(32)
        Write data in its byte lanes (valid with `stb & we`).
    ack : In(1)
        Combinational or late: high in the one cycle where the function performs the
        access (a write takes effect on the rising edge that ends this cycle).
    r_data : In(32)
        Read data, valid in the cycle where `ack` is high and `we` is low.
    """

    def __init__(self, addr_width: int) -> None:
        if not isinstance(addr_width, int) or addr_width < 0:
            raise TypeError(f"Address width must be a non-negative integer, not {addr_width!r}")
        self.addr_width = addr_width
        members = {"stb": Out(1), "we": Out(1), "addr": Out(addr_width), "be": Out(4),
                   "w_data": Out(32), "ack": In(1), "r_data": In(32)}
        if addr_width == 0:
            del members["addr"]  # a zero-width port would be `[-1:0]` in Verilog
        super().__init__(members)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AccessSignature) and other.addr_width == self.addr_width

    def __hash__(self) -> int:
        return hash(self.addr_width)

    def __repr__(self) -> str:
        return f"AccessSignature({self.addr_width})"
