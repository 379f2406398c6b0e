"""`RtlEndpoint`: the `models.contract.transaction.Endpoint` protocol over the simulated RTL.

Used by the testbench (the pyuvm driver sends every item through it) and by the QEMU
bridge as its RTL backend, so it does not depend on pyuvm.  Usage, inside a cocotb test:

    ep = RtlEndpoint(cocotb.top, console_sink=sys.stdout.buffer.write)
    await ep.start()                        # GPI clock + reset
    host = Host(ep)                         # byte-addressed read/write of any size
    vendor = await host.cfg_read(0x00, 2)

How a request is served: the `RequestDriver` puts it on `req` (idle pattern `idle`); a
posted request (memory write) returns None once the RTL accepts it; any other waits for
the completion with its tag, which the `CompletionMonitor` receives from `cpl` (back-pressure
pattern `backpressure`).  Several transactions may be outstanding at once (distinct tags;
`issue()` + `complete()` split a transaction for pipelining); requests go out in call
order.  Console bytes from `con` (back-pressure `console_backpressure`) go to
`console_sink`, one `bytes` object each.  The device's own requests (`mreq`, back-pressure
`master_backpressure`) and its `intx` go to `host` through the `HostMemoryAgent` (`master`),
which answers reads on `mcpl` after `master_latency`; without `host` there is no memory.

Speed: the clock runs in C (`Clock(impl="gpi")`) and every agent sleeps on a value change
while its stream is idle, so Python runs only on cycles where a beat is pending: a
transaction costs a few Python wake-ups, an idle wait none (see docs/measured-facts.md).

Errors are loud: a completion whose tag matches no outstanding request fails the test at
once (`UnexpectedCompletion`, an AssertionError naming the tag, raised in the completion
monitor's task, which cocotb ends the test for; also recorded in `errors`), instead of
leaving the request it belonged to to time out; a request the RTL does not accept, or a
completion that does not arrive, within `timeout_cycles` raises `TimeoutError`
(completions are checked by one watchdog, so within 9/8 of that), the last line of
defence; transactions pending when `reset()` is called raise `BusAborted`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import cocotb
from cocotb.clock import Clock
from cocotb.handle import SimHandleBase
from cocotb.simtime import get_sim_time
from cocotb.task import Task
from cocotb.triggers import ClockCycles, Event, FallingEdge, Timer

from models.contract.transaction import Completion, HostPort, Request
from tb.completion_monitor import CompletionMonitor
from tb.console_monitor import ConsoleMonitor
from tb.host_memory_agent import HostMemoryAgent
from tb.request_driver import BusAborted, RequestDriver
from tb.timing import Pattern

__all__ = ["BusAborted", "Outstanding", "RtlEndpoint", "UnexpectedCompletion"]

log = logging.getLogger("cosim.tb.endpoint")
stimulus_log = logging.getLogger("cosim.tb.stimulus")
# Always in sim.log, whatever the root level (cocotb leaves it at WARNING): the regression
# reads these lines to compare runs.
stimulus_log.setLevel(logging.INFO)


class UnexpectedCompletion(AssertionError):
    """The RTL completed with a tag no outstanding request has."""


@dataclass
class Outstanding:
    """A non-posted request sent to the RTL, waiting for its completion."""

    req: Request
    event: Event = field(default_factory=Event)
    issued: int | None = None  # cycle the request was accepted in
    completion: Completion | None = None
    cycle: int = -1  # cycle the completion was taken in
    aborted: bool = False
    timed_out: bool = False


class RtlEndpoint:
    """The RTL top (`cosim_top`) as an `Endpoint`; see the module docstring."""

    def __init__(
        self,
        dut: SimHandleBase,
        console_sink: Callable[[bytes], None] | None = None,
        idle: Pattern | None = None,
        backpressure: Pattern | None = None,
        *,
        console_backpressure: Pattern | None = None,
        host: HostPort | None = None,
        master_backpressure: Pattern | None = None,
        master_latency: Pattern | None = None,
        period_ns: int = 10,
        timeout_cycles: int = 100_000,
        reset_cycles: int = 4,
    ) -> None:
        if period_ns <= 0 or period_ns % 2:
            raise ValueError(
                f"Clock period must be a positive even number of ns, not {period_ns!r}"
            )
        if timeout_cycles <= 0:
            raise ValueError(f"Timeout must be a positive cycle count, not {timeout_cycles!r}")
        self.dut = dut
        self.period_ns = period_ns
        self.timeout_cycles = timeout_cycles
        self.reset_cycles = reset_cycles
        self._console_sink = console_sink
        self._pending: dict[int, Outstanding] = {}
        self.errors: list[str] = []
        self.started = False
        self._watchdog: Task[None] | None = None
        # Agents exist from construction on, so a testbench can add its callbacks to them.
        self.driver = RequestDriver(dut, dut.clk, idle=idle, timeout_cycles=timeout_cycles)
        self.completions = CompletionMonitor(
            dut, dut.clk, dut.rst, period_ns, backpressure, callback=self._on_completion
        )
        self.console = ConsoleMonitor(
            dut, dut.clk, dut.rst, period_ns, console_backpressure, callback=self._on_console
        )
        self.master = HostMemoryAgent(dut, period_ns, backpressure=master_backpressure,
                                      latency=master_latency, host=host)
        dut.rst.value = 1
        log.info(
            "RTL endpoint: period %d ns, idle %s, cpl back-pressure %s, con back-pressure %s",
            period_ns, idle, backpressure, console_backpressure,
        )

    async def start(self) -> None:
        """Start the clock (in C: no Python per edge) and apply a reset."""
        if self.started:
            raise RuntimeError("RtlEndpoint.start() called twice")
        Clock(self.dut.clk, self.period_ns, unit="ns", impl="gpi").start()
        self.started = True
        self._watchdog = cocotb.start_soon(self._watch())
        await self.reset()

    def stop(self) -> None:
        """Cancel the agents' coroutines (the clock keeps running)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.driver.stop()
        self.completions.stop()
        self.console.stop()
        self.master.stop()

    def log_stimulus(self, test: str) -> None:
        """One line naming what this test drove, for comparing runs (tb.seeding); the
        regression collects these lines from sim.log into stimulus.json."""
        stimulus_log.info("stimulus of %s: %d requests, digest %s", test, self.driver.beats,
                          self.driver.stimulus.hexdigest())

    async def reset(self) -> None:
        """Conventional reset: `rst` high for `reset_cycles` cycles, in-flight work abandoned.

        Pending transactions raise `BusAborted`: a reset loses them, as on a real link.
        """
        self.driver.abort()
        for pending in self._pending.values():
            pending.aborted = True
            pending.event.set()
        self._pending.clear()
        # `rst` changes a quarter period after a falling edge, never at an edge: monitors
        # sampling at rising edges (requests) and at falling edges (sinks) all see it
        # stable, so every beat is unambiguously before or after the reset.
        quarter = self.period_ns / 4
        await FallingEdge(self.dut.clk)
        await Timer(quarter, "ns")
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, self.reset_cycles)
        self.master.flush()
        await FallingEdge(self.dut.clk)
        await Timer(quarter, "ns")
        self.dut.rst.value = 0
        log.debug("reset done")

    def cycle(self) -> int:
        """The current clock cycle number (rising edge k is at k * period)."""
        return int(get_sim_time("ns") // self.period_ns)

    def is_outstanding(self, tag: int) -> bool:
        return tag in self._pending

    @property
    def outstanding(self) -> int:
        """Requests issued and waiting for their completion."""
        return len(self._pending)

    async def transact(self, req: Request) -> Completion | None:
        pending = await self.issue(req)
        return None if pending is None else await self.complete(pending)

    async def issue(self, req: Request) -> Outstanding | None:
        """Send `req`; return once the RTL accepted it, with a handle for its completion.

        Posted requests return None.  Use `complete(handle)` to wait for the completion;
        meanwhile more requests may be issued (pipelining, distinct tags).
        """
        if not self.started:
            raise RuntimeError("RtlEndpoint used before start()")
        if req.kind.posted:
            await self.driver.send(req)
            return None
        if req.tag in self._pending:
            raise ValueError(f"tag {req.tag} is already outstanding ({self._pending[req.tag].req})")
        pending = Outstanding(req)
        self._pending[req.tag] = pending  # before driving: the completion may come at once
        try:
            await self.driver.send(req)
        except BaseException:
            self._pending.pop(req.tag, None)
            raise
        pending.issued = self.cycle()
        return pending

    async def complete(self, pending: Outstanding) -> Completion:
        """Wait for the completion of an issued request (see `timeout_cycles`)."""
        if not pending.event.is_set():
            await pending.event.wait()
        if pending.timed_out:
            raise TimeoutError(
                f"no completion for {pending.req} within {self.timeout_cycles} cycles"
            )
        if pending.aborted:
            raise BusAborted(f"{pending.req} abandoned by a reset")
        assert pending.completion is not None
        return pending.completion

    async def _watch(self) -> None:
        """Fail transactions whose completion is overdue.

        One watchdog for all transactions, waking every `timeout_cycles / 8` cycles, is far
        cheaper than a timer per transaction (which halved the transaction rate): a
        completion missing for `timeout_cycles` is reported within 9/8 of that.
        """
        step = max(self.timeout_cycles // 8, 1)
        while True:
            await Timer(step * self.period_ns, "ns")
            now = self.cycle()
            for tag, pending in list(self._pending.items()):
                if pending.issued is not None and now - pending.issued >= self.timeout_cycles:
                    del self._pending[tag]
                    pending.timed_out = True
                    pending.event.set()
                    # Not an ERROR: the waiting caller gets TimeoutError, which fails the
                    # test unless the test expects it (a stuck-device negative case).
                    log.warning("no completion for %s since cycle %d", pending.req,
                                pending.issued)

    def _on_completion(self, item: tuple[int, Completion]) -> None:
        cycle, cpl = item
        pending = self._pending.pop(cpl.tag, None)
        if pending is None:
            # Fail now: the request this completion belonged to (e.g. a mangled tag) would
            # otherwise wait `timeout_cycles` and fail as a timeout, far from the cause.
            outstanding = ", ".join(f"{tag} ({p.req})" for tag, p in self._pending.items())
            msg = (f"completion {cpl} at cycle {cycle}: tag {cpl.tag} matches no outstanding "
                   f"request (outstanding tags: {outstanding or 'none'})")
            self.errors.append(msg)
            raise UnexpectedCompletion(msg)
        pending.completion = cpl
        pending.cycle = cycle
        pending.event.set()

    def _on_console(self, item: tuple[int, int]) -> None:
        if self._console_sink is not None:
            self._console_sink(bytes([item[1]]))
