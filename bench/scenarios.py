"""The scenarios of issue 6, each a function of (server spec, transport, plan) on a fresh server.

- ``main_life``: connect (1,000), latency (20k deliveries/s), sustainable, saturation: in that
  order, since saturation may leave a backlog or closed subscribers behind.
- ``slow_life``: 10% of the subscribers stop reading (their kernel buffers filled first),
  the sustainable search over the readers; then without the stalled, same readers, same life.
- ``memory_life``: RSS growth per idle connection.
- ``connect_life``: the main scenario's connect alone, for the floor (Hypercorn serving an
  empty app), so that each run also says what any app on Hypercorn pays to connect.
- ``scale_out``: sustainable deliveries/s of one vs two hubbub processes on Redis, each
  process with the same CPU budget (a cgroup quota).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.report import spread
from bench.servers import HUBBUB, RedisServer, Server, ServerSpec, cpu_quota_unavailable, generator_core
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
    # No run starts that would end past it: with the Node reference in the main and memory
    # lives, 2-3 runs and the scale-out, so that all of `make bench` stays within 25 minutes.
    budget_s: float = 13.5 * 60
    server_core: int | None = 0
    transports: tuple[str, ...] = ("sse", "ws", "mix")
    memory_transports: tuple[str, ...] = MEMORY_TRANSPORTS
    # scale-out: the CPU budget of every worker process, in cores (cgroup quota); both
    # workers on the server core. 2 x 0.3 = 0.6 of it: the core also spends 14-19% in
    # softirq at two workers' rates (charged to no process); with 2 x 0.4 it was full before
    # the budgets ran out, so the ratio measured the core (see bench/README.md).
    scale_out_quota: float = 0.3
    scale_out_transport: str = "mix"
    scale_out_precision: float = 1.08  # finer than ``precision``: the ratio compounds two searches
    scale_out_saturation_s: float = 2.5  # then flat out: throughput, less sensitive to latency bursts
    scale_out_runs: int | None = None  # None: ``runs``; 0: skipped
    scale_out_budget_s: float = 160  # reserved out of ``budget_s``; no new run past it
    scale_out_target: float = 1.7
    idle_many: int = 15_000  # --only idle: connections per process (the hard fd limit here is 20,000)
    idle_many_s: float = 30.0  # ... and how long they sit idle while the server's CPU is read (2 beats)
    idle_settle_s: float = 5.5  # ... after connecting's last presence frame (PRESENCE_INTERVAL 5 s)

    @property
    def latency_rate(self) -> float:
        return self.latency_deliveries_per_s / self.subscribers

    @property
    def first_rate(self) -> float:
        """Where the sustainable search starts without a hint: 50k deliveries/s."""
        return 50_000 / self.subscribers


QUICK = Plan(quick=True, runs=1, subscribers=200, idle_subscribers=500, latency_s=1.0,
             probe_s=0.6, max_probes=3, precision=1.25, saturation_s=1.0,
             saturation_warmup_s=0.3, transports=("mix",), budget_s=110,
             # memory per connection: --only idle measures it (floor, baseline, Node, hubbub)
             memory_transports=(),
             scale_out_runs=0, scale_out_budget_s=40, scale_out_precision=1.25,
             scale_out_saturation_s=1.0, idle_many=500, idle_many_s=2.0, idle_settle_s=0.0)


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


@contextlib.asynccontextmanager
async def _serving(spec: ServerSpec, plan: Plan, log_dir: Path) -> AsyncIterator[tuple[Server, Session]]:
    """A fresh server and a session on it; the session's subscribers are closed and the
    server stopped on the way out."""
    server = await _start(spec, plan, log_dir)
    session = Session(server)
    try:
        yield server, session
    finally:
        session.close()
        server.stop()


async def main_life(spec: ServerSpec, transport: str, plan: Plan, log_dir: Path,
                    hint: float | None) -> dict[str, Any]:
    async with _serving(spec, plan, log_dir) as (server, session):
        connect = await _connect(server, session, transport, plan)

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


async def _connect(server: Server, session: Session, transport: str, plan: Plan) -> dict[str, Any]:
    """Connects ``plan.subscribers``, each its own user, into one room, after a warm-up."""
    await session.connect(kinds(transport, 10), keep=False)  # warm the server's code paths
    meter = Meter(server)
    seconds = await session.connect(kinds(transport, plan.subscribers))
    return {"seconds": round(seconds, 3), **meter.read()}


async def connect_life(spec: ServerSpec, transport: str, plan: Plan, log_dir: Path) -> dict[str, Any]:
    """The main scenario's connect alone: for the floor (``servers.FLOOR``), which serves
    nothing else. Its time is what Hypercorn itself takes to accept the subscribers, parse
    their requests and send a response head and a welcome, with no application work."""
    async with _serving(spec, plan, log_dir) as (server, session):
        return await _connect(server, session, transport, plan)


async def _stalled_and_readers(server: Server, session: Session, transport: str,
                               plan: Plan) -> tuple[int, int]:
    """Connects the stalled share, fills their kernel buffers, then connects the readers.

    Returns how many stalled and how many filler POSTs were answered.
    """
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
    return stalled, filled


async def slow_life(spec: ServerSpec, transport: str, plan: Plan, log_dir: Path,
                    hint: float | None) -> dict[str, Any]:
    """The slow-client share, measured within one server life so two lives' noise stays out.

    10% stalled subscribers (kernel buffers filled), then the readers and the sustainable
    search over them; then the stalled ones leave and the same readers are searched again.
    share = with / without: same readers, same process.
    """
    async with _serving(spec, plan, log_dir) as (server, session):
        stalled, filled = await _stalled_and_readers(server, session, transport, plan)
        start = hint or plan.first_rate
        meter = Meter(server)
        result = await session.sustainable(start, plan.probe_s, plan.max_probes, step=1.2,
                                           precision=plan.precision)
        result.update(meter.read())
        result["stalled"] = stalled
        result["code"] = server.version
        result["filler_posts_answered"] = filled
        result["stalled_closed_by_server"] = sum(s.closed for s in session.subs if s.stall)
        for sub in session.subs:
            if sub.stall:
                sub.close()
        session.subs = [sub for sub in session.subs if not sub.stall]
        await server.wait_idle()
        meter = Meter(server)
        without = await session.sustainable(result["rate"] or start, plan.probe_s, plan.max_probes,
                                            step=1.2, precision=plan.precision)
        without.update(meter.read())
        base = without["deliveries_per_s"]
        result["without"] = without
        result["without_per_s"] = base
        result["share_pct"] = round(100 * result["deliveries_per_s"] / base, 1) if base else None
        return result


async def memory_life(spec: ServerSpec, transport: str, plan: Plan, log_dir: Path) -> dict[str, Any]:
    async with _serving(spec, plan, log_dir) as (server, session):
        await session.connect(kinds(transport, 50))  # warm-up, kept open
        if spec.publishes:
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


async def idle_life(spec: ServerSpec, plan: Plan, log_dir: Path) -> dict[str, Any]:
    """``plan.idle_many`` idle subscribers, half SSE and half WebSocket, each its own user:
    the seconds to accept them, RSS per connection, and the server's CPU while they sit idle
    for ``plan.idle_many_s`` (heartbeats, WebSocket pings and the silence checks at the
    default HEARTBEAT_INTERVAL and IDLE_TIMEOUT), as a share of one core, from
    ``plan.idle_settle_s`` after the last connect (connecting's presence frame is out)."""
    async with _serving(spec, plan, log_dir) as (server, session):
        await session.connect(kinds("mix", 50))  # warm-up, kept open
        await server.wait_idle(quiet_s=0.2, timeout_s=2.0)
        before = server.rss_kb()
        seconds = await session.connect(kinds("mix", plan.idle_many), timeout_s=300)
        await server.wait_idle(quiet_s=0.5, timeout_s=15.0)
        after = server.rss_kb()
        cpu_pct: float | None = None  # a server that sends nothing at rest: no timer to measure
        idle_s = plan.idle_many_s if spec.beats else 0.0  # (measured 0.0% each time it was)
        if spec.beats:
            # Connecting is over only once its last presence frame went out (hubbub gathers the
            # joins of a crowded room for PRESENCE_INTERVAL, 5 s): that fan-out is not idling.
            await asyncio.sleep(plan.idle_settle_s)
            await server.wait_idle(quiet_s=0.5, timeout_s=15.0)
            cpu0, start = server.cpu_s(), time.monotonic()
            await asyncio.sleep(idle_s)  # the load is time itself: connections sitting idle
            cpu_pct = round(100 * (server.cpu_s() - cpu0) / (time.monotonic() - start), 2)
        return {"connections": plan.idle_many, "accept_s": round(seconds, 2),
                "kb_per_connection": round((after - before) / plan.idle_many, 2),
                "idle_cpu_pct": cpu_pct, "idle_s": idle_s,
                "closed_while_idle": sum(1 for sub in session.subs if sub.closed),
                "code": server.version}


def scale_out_unavailable(plan: Plan) -> str | None:
    """Why the scale-out cannot be measured honestly here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH (install Redis: the scenario starts a private one)"
    if plan.server_core is None:
        return "fewer than 2 cores: the workers and the generator would share one"
    why = cpu_quota_unavailable()
    if why:
        return f"no CPU budget can be enforced per worker ({why}); without one the workers " \
               "would just share the server core"
    return None


async def scale_out(plan: Plan, log_dir: Path) -> dict[str, Any]:
    """One vs two Hypercorn worker processes on Redis: sustainable deliveries/s, and the ratio.

    On 2 cores two workers cannot each have a core of their own, so every worker process
    gets the same CPU budget, ``plan.scale_out_quota`` of a core (a cgroup CFS quota), and
    all of them run on the server core, with room to spare (2 x 0.3 = 0.6 of it, plus the
    softirq work the core does for them: the budgets, not the core, should run out).
    One worker has one budget, two workers two: the ratio says how far hubbub's fan-out
    scales across processes through Redis, not what a second core would give (the
    workers share one core's caches, a quota stretches every burst of work by 1/quota in
    wall time, and Redis sits on the generator's core; see bench/README.md).

    "Two workers" are two separate Hypercorn processes (``--workers 0``, one port each,
    the same ``REDIS_URL`` and ``REDIS_PREFIX``), not one ``--workers 2`` supervisor: the
    kernel's accept balancing over one shared socket is uneven, while separate ports let
    the generator put exactly half the subscribers of each kind on each process. The
    publisher's connections alternate between the ports too, so each process answers half
    the POSTs (what a load balancer in front would do), and every message reaches the
    other process through Redis pub/sub.

    A private ``redis-server`` (no persistence) runs on the generator's core for the whole
    scenario; each life has a fresh key prefix. Per run: one worker, then two, each a
    fresh set of processes, ``Session.sustainable`` over ``plan.subscribers`` readers,
    then ``Session.saturation``. Servers, Redis and cgroups are removed in ``finally``.
    """
    why = scale_out_unavailable(plan)
    if why:
        return {"status": f"not measured: {why}"}
    n_runs = plan.runs if plan.scale_out_runs is None else plan.scale_out_runs
    runs: list[dict[str, Any]] = []
    hints: dict[int, float] = {}
    start = time.monotonic()
    last_run_s = 0.0
    redis = RedisServer(generator_core(), log_dir)
    try:
        await redis.ready()
        for run in range(n_runs):
            if run and time.monotonic() - start + last_run_s > plan.scale_out_budget_s:
                print(f"  (scale-out time budget: stopping after {run} runs)", flush=True)
                break
            run_start = time.monotonic()
            record: dict[str, Any] = {}
            for workers in (1, 2):
                print(f"scale-out run {run + 1}/{n_runs} {workers} worker(s) on Redis, "
                      f"{plan.scale_out_quota:g} core each", flush=True)
                hint = hints.get(workers)
                if hint is None and workers == 2 and record["1"]["rate"]:
                    hint = record["1"]["rate"] * plan.scale_out_target
                began = time.monotonic()
                life = await _scale_out_life(workers, plan, log_dir, redis, hint)
                life["life_s"] = round(time.monotonic() - began, 1)
                record[str(workers)] = life
                hints.setdefault(workers, life["rate"] or plan.first_rate)
                each = "/".join(f"{c:g}" for c in life["worker_cpu_pct"])
                search = life["search"]
                sat = life["saturation"]
                print(f"    [{life['life_s']} s] sustainable {life['deliveries_per_s']:,} deliv/s "
                      f"({len(life['probes'])} probes{', capped' if life['capped'] else ''}) | "
                      f"CPU at that rate: worker(s) {each}% of a core (quota "
                      f"{100 * plan.scale_out_quota:g}%), generator {life['generator_cpu_pct']}%, "
                      f"redis {life['redis_cpu_pct']}%; server core idle {life['core_idle_pct']}%, "
                      f"softirq {life['core_softirq_pct']}% | failed on: {life['bound']} | over the "
                      f"search: throttled {search.get('server_throttled_pct')}%, generator waited "
                      f"{search['generator_waited_pct']}% | saturation {sat['deliveries_per_s']:,} "
                      f"deliv/s ({sat['deliveries_per_cpu_s']:,} per worker CPU-s, lost "
                      f"{sat['lost_pct']}%)", flush=True)
            one, two = record["1"]["deliveries_per_s"], record["2"]["deliveries_per_s"]
            record["ratio"] = round(two / one, 3) if one else None
            runs.append(record)
            last_run_s = time.monotonic() - run_start
    finally:
        redis.stop()
    return {"status": "measured", "quota_cores": plan.scale_out_quota,
            "transport": plan.scale_out_transport, "subscribers": plan.subscribers,
            "summary": scale_out_summary(runs, plan.scale_out_target), "runs": runs}


async def _scale_out_life(workers: int, plan: Plan, log_dir: Path, redis: RedisServer,
                          hint: float | None) -> dict[str, Any]:
    """``workers`` hubbub processes on one Redis hub, each with its CPU budget.

    The sustainable search, then saturation (flat out, as in ``main_life``).
    """
    spec = replace(HUBBUB, env={**HUBBUB.env, "REDIS_URL": redis.url,
                                "REDIS_PREFIX": f"bench-{os.getpid()}-{secrets.token_hex(4)}:"})
    servers: list[Server] = []
    try:
        for _ in range(workers):
            servers.append(Server(spec, plan.server_core, log_dir, cpu_quota=plan.scale_out_quota))
        for server in servers:
            await server.ready()
        session = Session(servers)
        try:
            transport = plan.scale_out_transport
            await session.connect(kinds(transport, 10 * workers), keep=False)  # warm the code paths
            connect_s = await session.connect(kinds(transport, plan.subscribers))
            await session.publisher.paced(20, 0.5)  # warm the Redis path (script, pub/sub)
            await session.drained(session.readers(), 2.0)
            redis_cpu = redis.cpu_s()
            answered = dict(session.publisher.answered_by_port)
            meter = Meter(servers)
            result = await session.sustainable(hint or plan.first_rate, plan.probe_s, plan.max_probes,
                                               step=1.2 if hint else 1.6,
                                               precision=plan.scale_out_precision)
            search = meter.read()
            search["redis_cpu_pct"] = round(100 * (redis.cpu_s() - redis_cpu) / search["wall_s"], 1)
            posts = [session.publisher.answered_by_port.get(s.port, 0) - answered.get(s.port, 0)
                     for s in servers]
            search["posts_answered_each"] = posts
            search["subscribers_each"] = [sum(sub.port == s.port for sub in session.readers())
                                          for s in servers]
            await session.restore()
            meter = Meter(servers)
            saturation = await session.saturation(plan.scale_out_saturation_s,
                                                  plan.saturation_max_messages, plan.saturation_warmup_s)
            saturation.update(meter.read())
        finally:
            session.close()
    finally:
        for server in servers:
            server.stop()
    passed = [p for p in result["probes"] if p["ok"]]
    failed = [p for p in result["probes"] if not p["ok"]]
    at = max(passed, key=lambda p: p["rate"]) if passed else {}
    above = min(failed, key=lambda p: p["rate"]) if failed else {}

    def per_worker(probe: dict[str, Any]) -> list[float]:
        return probe.get("server_cpu_pct_each") or [probe.get("server_cpu_pct", 0.0)]

    # What stopped the first failing probe (a heuristic): the workers' budgets ran out, or the
    # server core was full (softirq work and the other worker), or neither (noise, latency).
    bound = None
    if above:
        if above.get("server_throttled_pct", 0) >= 5 * workers:
            bound = "quota"
        elif above.get("core_idle_pct", 100) < 5:
            bound = "core"
        else:
            bound = "neither"

    return {**result, "workers": workers, "quota_cores": plan.scale_out_quota,
            "connect_s": round(connect_s, 3), "code": servers[0].version,
            # CPU over the highest passing probe (the sustainable rate) and the lowest failing one
            "worker_cpu_pct": per_worker(at) if at else [],
            "generator_cpu_pct": at.get("generator_cpu_pct"),
            "worker_cpu_pct_above": per_worker(above) if above else [],
            "redis_cpu_pct": search["redis_cpu_pct"],
            "core_idle_pct": at.get("core_idle_pct"), "core_softirq_pct": at.get("core_softirq_pct"),
            "bound": bound, "search": search, "saturation": saturation}


def scale_out_summary(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Medians [min-max] of each worker count, the ratio of the medians, and the verdict."""
    if not runs:
        return {}

    def values(workers: str, key: str) -> list[Any]:
        return [r[workers][key] for r in runs if r[workers].get(key) is not None]

    def ratio_of(one: dict[str, float] | None, two: dict[str, float] | None) -> float | None:
        return round(two["median"] / one["median"], 3) if one and two and one["median"] else None

    one, two = spread(values("1", "deliveries_per_s")), spread(values("2", "deliveries_per_s"))
    ratio = ratio_of(one, two)
    sat = {w: spread([r[w]["saturation"]["deliveries_per_s"] for r in runs]) for w in ("1", "2")}
    return {
        "one_worker": one, "two_workers": two, "ratio": ratio,
        "ratio_per_run": spread([r["ratio"] for r in runs if r["ratio"] is not None]),
        "target": target, "verdict": None if ratio is None else ("ok" if ratio >= target else "MISS"),
        "capped": any(r[w].get("capped") for r in runs for w in ("1", "2")),
        "saturation": {"one_worker": sat["1"], "two_workers": sat["2"],
                       "ratio": ratio_of(sat["1"], sat["2"]),
                       "deliveries_per_cpu_s": {
                           w: spread([r[w]["saturation"]["deliveries_per_cpu_s"] for r in runs])
                           for w in ("1", "2")}},
        "worker_cpu_pct": {w: spread([statistics.fmean(c) for c in values(w, "worker_cpu_pct") if c])
                           for w in ("1", "2")},
        "generator_cpu_pct": {w: spread(values(w, "generator_cpu_pct")) for w in ("1", "2")},
        "redis_cpu_pct": {w: spread(values(w, "redis_cpu_pct")) for w in ("1", "2")},
        # Noise: the generator (and redis-server) alone on their core should never wait.
        "generator_waited_pct": spread([r[w]["search"]["generator_waited_pct"] for r in runs
                                        for w in ("1", "2")]),
        "code_versions": sorted({r[w]["code"] for r in runs for w in ("1", "2")}),
    }
