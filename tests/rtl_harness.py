"""Drive `rtl.top.Top` in Amaranth's simulator through the `Endpoint` API.

`SimEndpoint` is an `Endpoint` whose `transact` drives one request onto `req` and takes
its completion from `cpl`, with optional idle cycles before each request and random
back-pressure on `cpl`; `ConsoleSink` takes the `con` bytes with optional back-pressure;
`MasterPort` serves the device's own requests (`mreq`/`mcpl`) from a `HostPort`, with
back-pressure and completion latency, and reports `intx` changes to it.
Both count cycles and raise `TimeoutError` instead of hanging.  Used by tests/test_rtl_*.py
so the RTL is exercised through the same `Host` API as the model.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from amaranth.sim import Simulator, SimulatorContext

from models.contract.transaction import Completion, HostPort, Kind, Request, Status
from models.device import NoHost
from rtl.top import Top

__all__ = ["ConsoleSink", "MasterPort", "SimEndpoint", "run_top"]

log = logging.getLogger("cosim.tests.rtl")

PERIOD = 1e-8  # 100 MHz; only the cycle count matters


class SimEndpoint:
    """Serve `Request`s on a simulated `Top`, one at a time.

    `idle_max`: up to this many idle cycles (random) before each request.
    `stall`: probability that `cpl.ready` is low in a cycle.
    `last_latency`: cycles from the edge accepting the request to the edge taking its
    completion (0 for posted requests).
    """

    def __init__(self, ctx: SimulatorContext, top: Top, *, idle_max: int = 0,
                 stall: float = 0.0, timeout: int = 2000, seed: int = 1) -> None:
        self.ctx = ctx
        self.top = top
        self.idle_max = idle_max
        self.stall = stall
        self.timeout = timeout
        self.rnd = random.Random(seed)
        self.last_latency = 0

    async def transact(self, req: Request) -> Completion | None:
        ctx, top = self.ctx, self.top
        for _ in range(self.rnd.randint(0, self.idle_max) if self.idle_max else 0):
            await ctx.tick()
        ctx.set(top.req.valid, 1)
        for name in ("kind", "tag", "addr", "be", "data"):
            ctx.set(getattr(top.req, name), int(getattr(req, name)))
        for _ in range(self.timeout):
            _, _, ready = await ctx.tick().sample(top.req.ready)
            if ready:
                break
        else:
            raise TimeoutError(f"request not accepted within {self.timeout} cycles: {req}")
        ctx.set(top.req.valid, 0)
        if req.kind.posted:
            self.last_latency = 0
            return None
        for cycle in range(1, self.timeout + 1):
            take = self.rnd.random() >= self.stall
            ctx.set(top.cpl.ready, take)
            _, _, valid, tag, status, data = await ctx.tick().sample(
                top.cpl.valid, top.cpl.tag, top.cpl.status, top.cpl.data)
            if valid and take:
                ctx.set(top.cpl.ready, 0)
                self.last_latency = cycle
                return Completion(tag, Status(status), data)
        raise TimeoutError(f"no completion within {self.timeout} cycles for {req}")

    async def reset(self) -> None:
        raise NotImplementedError("reset the simulation instead: Top has a synchronous rst")


class ConsoleSink:
    """Takes `con` bytes into `data`; `cpl.ready`-like back-pressure with `stall`."""

    def __init__(self, top: Top, *, stall: float = 0.0, seed: int = 2) -> None:
        self.top = top
        self.stall = stall
        self.rnd = random.Random(seed)
        self.data = bytearray()
        self.paused = False  # while True, `con.ready` stays low

    async def process(self, ctx: SimulatorContext) -> None:
        con = self.top.con
        while True:
            take = not self.paused and self.rnd.random() >= self.stall
            ctx.set(con.ready, take)
            _, _, valid, data = await ctx.tick().sample(con.valid, con.data)
            if valid and take:
                self.data.append(data)


class MasterPort:
    """The host side of `mreq`/`mcpl`: each request the device offers goes to `host` (a
    `HostPort`); `stall` is the probability that `mreq.ready` is low in a cycle, `latency`
    the cycles before a read's completion is offered.  `intx` changes go to `host.intx`."""

    def __init__(self, top: Top, host: HostPort, *, stall: float = 0.0, latency: int = 0,
                 seed: int = 3) -> None:
        self.top = top
        self.host = host
        self.stall = stall
        self.latency = latency
        self.rnd = random.Random(seed)
        self.requests: list[Request] = []

    async def process(self, ctx: SimulatorContext) -> None:
        top = self.top
        intx = 0
        while True:
            take = self.rnd.random() >= self.stall
            ctx.set(top.mreq.ready, take)
            _, _, valid, kind, tag, addr, be, data, level = await ctx.tick().sample(
                top.mreq.valid, top.mreq.kind, top.mreq.tag, top.mreq.addr, top.mreq.be,
                top.mreq.data, top.intx)
            if level != intx:
                intx = level
                self.host.intx(bool(level))
            if not (valid and take):
                continue
            req = Request(Kind(kind), addr, be, data, tag)
            self.requests.append(req)
            if req.kind is Kind.MEM_WRITE:
                self.host.memory_write(req)
                continue
            cpl = self.host.memory_read(req)
            ctx.set(top.mreq.ready, 0)
            for _ in range(self.latency):
                await ctx.tick()
            ctx.set(top.mcpl.valid, 1)
            ctx.set(top.mcpl.tag, cpl.tag)
            ctx.set(top.mcpl.status, int(cpl.status))
            ctx.set(top.mcpl.data, cpl.data)
            while True:
                _, _, ready = await ctx.tick().sample(top.mcpl.ready)
                if ready:
                    break
            ctx.set(top.mcpl.valid, 0)


def run_top(body: Callable[[SimulatorContext, Top, ConsoleSink], Awaitable[Any]], *,
            top: Top | None = None, con_stall: float = 0.0, vcd: str | None = None,
            master: Callable[[Top], MasterPort] | None = None) -> None:
    """Simulate `top` (a fresh `Top` by default) running `body(ctx, top, sink)` to its end;
    the device's own requests go to `master(top)` (default: a host with no memory)."""
    top = top if top is not None else Top()
    sink = ConsoleSink(top, stall=con_stall)
    port = master(top) if master is not None else MasterPort(top, NoHost())
    sim = Simulator(top)
    sim.add_clock(PERIOD)
    sim.add_testbench(sink.process, background=True)
    sim.add_testbench(port.process, background=True)

    async def testbench(ctx: SimulatorContext) -> None:
        await body(ctx, top, sink)

    sim.add_testbench(testbench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
