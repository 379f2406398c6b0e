"""pyuvm sequence item: one `Request` (or a reset) and, once driven, its result.

Sequences rarely build items by hand: `SequenceEndpoint` makes a running sequence look
like an `Endpoint`, so `models.contract.transaction.Host(SequenceEndpoint(seq))` gives sequences
the same byte-addressed `read`/`write` API the bridge and the models use, with every DW
request flowing through sequencer, driver, monitors and scoreboard.
"""

from __future__ import annotations

from cocotb.triggers import Event
from pyuvm import uvm_sequence, uvm_sequence_item

from models.contract.transaction import Completion, Host, Request
from tb.reset_check import check_reset_state

__all__ = ["ReqItem", "SequenceEndpoint"]


class ReqItem(uvm_sequence_item):
    """A request to drive, or a bus reset when `req` is None.

    `wait=False` lets the driver return as soon as the RTL accepted the request (the
    completion arrives later, `done` is set then): how a sequence pipelines requests,
    e.g. an RNG read issued right behind a SEED write.
    The driver fills in `req.tag` (tags are a bus resource), `completion` and `aborted`.
    """

    def __init__(self, name: str, req: Request | None = None, wait: bool = True) -> None:
        super().__init__(name)
        self.req = req
        self.wait = wait
        self.completion: Completion | None = None
        self.aborted = False  # lost to a reset
        self.accepted_cycle: int | None = None
        self.completed_cycle: int | None = None
        self.done = Event()

    @property
    def latency(self) -> int | None:
        """Cycles from the RTL accepting the request to it taking the completion."""
        if self.accepted_cycle is None or self.completed_cycle is None:
            return None
        return self.completed_cycle - self.accepted_cycle

    @property
    def is_reset(self) -> bool:
        return self.req is None

    def __str__(self) -> str:
        return "RESET" if self.req is None else str(self.req)


class SequenceEndpoint:
    """An `Endpoint` that sends each request as an item of `seq` (which must be running)."""

    def __init__(self, seq: uvm_sequence) -> None:
        self.seq = seq

    async def send(self, item: ReqItem) -> ReqItem:
        await self.seq.start_item(item)
        await self.seq.finish_item(item)
        return item

    async def transact(self, req: Request) -> Completion | None:
        item = await self.send(ReqItem("req", req))
        return item.completion

    async def issue(self, req: Request) -> ReqItem:
        """Send without waiting for the completion; `await item.done.wait()` for it."""
        return await self.send(ReqItem("req", req, wait=False))

    async def reset(self) -> None:
        """A bus reset, then the reset read-back (`tb.reset_check`) through this sequence,
        before the sequence can write anything: a register that kept its value fails here."""
        await self.send(ReqItem("reset"))
        await check_reset_state(Host(self), "after a reset")
