"""The scenarios of issue 6, each a function of (server spec, transport, plan) on a fresh server.

- ``main_life``: connect (1,000), latency (20k deliveries/s), sustainable, saturation: in that
  order, since saturation may leave a backlog or closed subscribers behind.
- ``slow_life``: 10% of the subscribers stop reading (their kernel buffers filled first),
  then the sustainable search again over the readers.
- ``memory_life``: RSS growth per idle connection.
- ``scale_out``: pending the Redis backend (a stub with the shape the real one will have).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import Server, ServerSpec
from bench.session import Meter, Session

MEMORY_TRANSPORTS = ("sse", "ws")


@dataclass(frozen=True)
class Plan:
    quick: bool = False
    runs: int = 3
    subscribers: int = 1000
    idle_subscribers: int = 5000
    latency_deliveries_per_s: int = 20_000  # 20 messages/s to 1,000 subscribers
    latency_s: float = 3.0
    probe_s: float = 1.5
    max_probes: int = 6
    saturation_s: float = 2.5
    saturation_warmup_s: float = 0.5
    saturation_max_messages: int = 20_000
    stalled_share: float = 0.1
    filler_messages: int = 100  # 6 MB per stalled subscriber: past loopback's ~4 MB of buffers
    filler_bytes: int = 60_000
    precision: float = 1.1  # the sustainable search stops when fail/pass rates are this close
    budget_s: float = 14 * 60
    server_core: int | None = 0
    transports: tuple[str, ...] = ("sse", "ws", "mix")

    @property
    def latency_rate(self) -> float:
        return self.latency_deliveries_per_s / self.subscribers

    @property
    def first_rate(self) -> float:
        """Where the sustainable search starts without a hint: 50k deliveries/s."""
        return 50_000 / self.subscribers


QUICK = Plan(quick=True, runs=1, subscribers=200, idle_subscribers=500, latency_s=1.5,
             probe_s=0.8, max_probes=4, precision=1.25, saturation_s=1.5,
             saturation_warmup_s=0.3, transports=("sse", "ws"), budget_s=110)


def kinds(transport: str, n: int) -> list[str]:
    if transport == "mix":
        return ["ws" if i % 2 else "sse" for i in range(n)]
    return [transport] * n


async def _start(spec: ServerSpec, plan: Plan, log_dir: Path) -> Server:
    server = Server(spec, plan.server_core, log_dir)
    try:
        await server.ready()
    except BaseException:
        server.stop()
        raise
    return server


async def main_life(spec: ServerSpec, transport: str, plan: Plan, log_dir: Path,
                    hint: float | None) -> dict[str, Any]:
    server = await _start(spec, plan, log_dir)
    session = Session(server)
    try:
        await session.connect(kinds(transport, 10), keep=False)  # warm the server's code paths
        meter = Meter(server)
        seconds = await session.connect(kinds(transport, plan.subscribers))
        connect = {"seconds": round(seconds, 3), **meter.read()}

        meter = Meter(server)
        latency = await session.latency(plan.latency_rate, plan.latency_s)
        latency.update(meter.read())

        meter = Meter(server)
        step = 1.2 if hint else 1.6
        sustainable = await session.sustainable(hint or plan.first_rate, plan.probe_s,
                                                plan.max_probes, step=step,
                                                precision=plan.precision)
        sustainable.update(meter.read())

        meter = Meter(server)
        saturation = await session.saturation(plan.saturation_s, plan.saturation_max_messages,
                                              plan.saturation_warmup_s)
        saturation.update(meter.read())
        connect["code"] = server.version
        return {"connect": connect, "latency": latency, "sustainable": sustainable,
                "saturation": saturation}
    finally:
        session.close()
        server.stop()


async def slow_life(spec: ServerSpec, transport: str, plan: Plan, log_dir: Path,
                    hint: float | None) -> dict[str, Any]:
    server = await _start(spec, plan, log_dir)
    session = Session(server)
    try:
        stalled = round(plan.subscribers * plan.stalled_share)
        await session.connect(kinds(transport, stalled), stall=True)
        filler = b'{"text":"%s"}' % (b"f" * plan.filler_bytes)
        filled = 0
        for _ in range(plan.filler_messages):
            if not await session.publisher.post_raw(filler, timeout_s=1.5):
                break  # the server blocks on a stalled subscriber: that is what we wanted to see
            filled += 1
        await server.wait_idle()
        await session.connect(kinds(transport, plan.subscribers - stalled))
        meter = Meter(server)
        result = await session.sustainable(hint or plan.first_rate, plan.probe_s, plan.max_probes,
                                           step=1.2 if hint else 1.6, precision=plan.precision)
        result.update(meter.read())
        result["stalled"] = stalled
        result["code"] = server.version
        result["filler_posts_answered"] = filled
        result["stalled_closed_by_server"] = sum(s.closed for s in session.subs if s.stall)
        return result
    finally:
        session.close()
        server.stop()


async def memory_life(spec: ServerSpec, transport: str, plan: Plan, log_dir: Path) -> dict[str, Any]:
    server = await _start(spec, plan, log_dir)
    session = Session(server)
    try:
        await session.connect(kinds(transport, 50))  # warm-up, kept open
        await session.publisher.paced(50, 0.1)
        await session.drained(session.readers(), 2.0)
        await server.wait_idle(quiet_s=0.2, timeout_s=2.0)
        before = server.rss_kb()
        seconds = await session.connect(kinds(transport, plan.idle_subscribers), timeout_s=120)
        await asyncio.sleep(0.3)
        await server.wait_idle(quiet_s=0.2, timeout_s=3.0)
        after = server.rss_kb()
        n = plan.idle_subscribers
        return {"kb_per_connection": round((after - before) / n, 2), "rss_before_kb": before,
                "rss_after_kb": after, "connections": n, "connect_s": round(seconds, 3),
                "code": server.version}
    finally:
        session.close()
        server.stop()


async def scale_out(plan: Plan, log_dir: Path) -> dict[str, Any]:
    """One vs two Hypercorn workers on Redis: sustainable deliveries/s of each, and the ratio.

    To be written with the Redis backend: start ``ServerSpec(..., workers=N,
    env={"REDIS_URL": ...})`` without pinning to one core, spread the subscribers
    over both workers, and run ``Session.sustainable`` against each.
    """
    return {"status": "pending the Redis backend"}
