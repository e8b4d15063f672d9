"""Many rooms, publish-heavy: the load of a chat product (``python -m bench --only rooms``).

The other scenarios fan one room's messages out to 1,000 subscribers (a notification
product). Here 1,000 rooms of 10 members each (half SSE, half WebSocket, mixed in every
room, each member its own user) and chat posted to random rooms: half by POST over
keep-alive connections, half as a ``{"type":"chat","text"}`` frame from a random WebSocket
member of the room on its own connection (the sender gets an ack, the 9 others the message).

Per server life: connect all members; latency at a fixed publish rate, with the server's
CPU per publish there; the sustainable search (``Session.probe``/``Session.sustainable``'s
logic, per room); then, after a drain, the messages some member never got. Each run also
has a life of the floor (``floor_life``: Hypercorn serving ``bench/floor_app.py``, which
answers every POST and frame and fans nothing out), whose CPU per publish at the same rate
is what taking the messages in costs on Hypercorn before any application work.
``run(specs, plan, log_dir)`` measures, ``summarise`` and ``table`` report; ``main`` is
what ``python -m bench --only rooms`` calls.

``main`` also runs hubbub on a private Redis (``servers.RedisServer``, started for the
scenario), right after hubbub on memory in every run: the "Redis at full speed" ratio for
many rooms is read here (``redis_ratio``), not in ``--only redis``, which would repeat the
memory life.

Every room numbers its own messages (``m#<seq>:<send ns>``): a member belongs to one
room, so its ``count`` and ``last_seq`` (see ``Room.caught_up``) say how far it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import report, servers
from bench.clients import Recorder, Subscriber, WSSubscriber, open_subscriber
from bench.publisher import HttpConnection
from bench.servers import BASELINE, FLOOR, HUBBUB, ROOT, Server, ServerSpec, token
from bench.session import MAX_AGE_S, MAX_SLOPE, Meter, _slope

WATCH_EVERY_S = 0.05  # a pass over 10,000 members costs ~1 ms (2% of a core at this period)
GENERATOR_LIMIT_PCT = 80.0


@dataclass(frozen=True)
class RoomsPlan:
    quick: bool = False
    runs: int = 3
    rooms: int = 1000
    per_room: int = 10  # members: even indexes SSE, odd WebSocket
    ws_share: float = 0.5  # publishes sent as a WebSocket frame; the rest are POSTs
    latency_rate: float = 2000.0  # publishes/s for the latency phase
    latency_warmup_s: float = 0.5
    latency_s: float = 3.0
    # Where the sustainable search starts (first run), publishes/s: a POST costs a Quart
    # server 1.5-3 ms of CPU here, so Python servers sustain hundreds to ~1,000.
    first_rate: float = 1000.0
    probe_s: float = 1.5
    max_probes: int = 6
    later_probes: int = 3  # runs after the first start at its answer, with a finer step
    precision: float = 1.1
    post_connections: int = 32  # paced POSTs in flight at most
    connect_concurrency: int = 100  # below Hypercorn's listen backlog (see bench/README.md)
    drain_s: float = 5.0  # how long the end of a life waits for stragglers before counting losses
    server_core: int | None = 0
    seed: int = 6

    @property
    def subscribers(self) -> int:
        return self.rooms * self.per_room


# A smoke test: a tenth of the members, one run, short phases, a coarse search.
QUICK_ROOMS = RoomsPlan(quick=True, runs=1, rooms=100, latency_rate=500.0, latency_s=1.0,
                        latency_warmup_s=0.3, first_rate=800.0, probe_s=0.6, max_probes=3,
                        precision=1.3, drain_s=2.0)


REDIS_NAME = "hubbub-redis"  # hubbub on Redis, beside hubbub on memory


def default_specs() -> list[ServerSpec]:
    """baseline, node (when ``servers.NODE`` exists and can start here), hubbub."""
    specs = [BASELINE]
    node = getattr(servers, "NODE", None)
    unavailable = getattr(servers, "node_unavailable", lambda: None)
    if node is not None and (ROOT / "bench/node/node_modules").is_dir() and unavailable() is None:
        specs.append(node)
    specs.append(HUBBUB)
    return specs


def with_redis(spec: ServerSpec, url: str, name: str = REDIS_NAME) -> ServerSpec:
    """hubbub on the Redis backend at ``url`` (e.g. a ``servers.RedisServer``): each life
    gets a fresh ``REDIS_PREFIX`` in ``run``, so no life sees another's rooms or history."""
    return replace(spec, name=name, env={**spec.env, "REDIS_URL": url})


# -- the rooms and the load ----------------------------------------------------------------


@dataclass
class Room:
    name: str
    members: list[Subscriber] = field(default_factory=list)
    seq: int = 0  # messages published to it so far
    sent_ns: list[int] = field(default_factory=lambda: [0])  # seq -> when due (monotonic ns)
    # The seqs each WebSocket member sent itself: it gets an ack, never the message.
    own: dict[Subscriber, set[int]] = field(default_factory=dict)
    sent_by: dict[Subscriber, int] = field(default_factory=dict)  # how many each member sent
    void: set[int] = field(default_factory=set)  # POSTs refused (not 202): never published

    def caught_up(self, sub: Subscriber) -> int:
        """The highest seq up to which ``sub`` has everything it should get.

        First by count: a reader keeps the seq of the last message of each read, so two
        messages the server sent in the other order (a frame overtaking a POST) leave
        ``last_seq`` one short until the room's next message, which may be seconds away.
        """
        if sub.count >= self.seq - len(self.void) - self.sent_by.get(sub, 0):
            return self.seq
        seq = sub.last_seq
        own = self.own.get(sub)
        if own:
            own.difference_update([s for s in own if s <= seq])  # passed by what it received
        void = self.void
        while (own and seq + 1 in own) or (void and seq + 1 in void):
            seq += 1
        return seq


class RoomsLoad:
    """Chat to random rooms, paced: half POSTs (``post_connections`` keep-alive connections),
    half WebSocket frames from a random member of the room.

    Each message's text is ``m#<room seq>:<time.time_ns() at send>``; ``Room.sent_ns`` keeps
    the slot it was due at (monotonic), so a POST waiting for a free connection ages like a
    message the server is slow to deliver (as ``Publisher.paced``).
    """

    def __init__(self, rooms: list[Room], port: int, bearer: str | None, plan: RoomsPlan) -> None:
        auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
        self.headers = auth + "Content-Type: application/json\r\n"
        self.rooms = rooms
        self.port = port
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.ws_members = [[s for s in room.members if isinstance(s, WSSubscriber)] for room in rooms]
        self.errors = 0
        self.failures: dict[str, int] = {}  # why POSTs failed: "HTTP 503", "TimeoutError", ...
        self.answered = 0
        self.posts = 0
        self.frames = 0
        self.stopping = False
        self.lateness_s = 0.0
        self.due = 0  # deliveries the members should get: per_room per POST, one fewer per frame
        self.in_flight = 0  # POSTs written and not answered yet
        self.cut = 0  # POSTs still in flight when a probe gave up on them (their fan-out may stop)
        self._pending: deque[int] = deque()  # slots of POSTs not yet handed to a connection

    def _text(self, room: Room, slot: int, frame: bool) -> bytes:
        self.due += len(room.members) - int(frame)
        room.seq += 1
        room.sent_ns.append(slot)
        return b"m#%d:%d" % (room.seq, time.time_ns())

    def oldest_unsent_slot_ns(self) -> int | None:
        return self._pending[0] if self._pending else None

    def _frame(self, index: int, slot: int) -> bool:
        """A chat frame from a random open WebSocket member of room ``index`` (False: none left)."""
        room = self.rooms[index]
        members = [s for s in self.ws_members[index] if not s.closed]
        if not members:
            return False
        sub = self.rng.choice(members)
        text = self._text(room, slot, True)
        room.own.setdefault(sub, set()).add(room.seq)
        room.sent_by[sub] = room.sent_by.get(sub, 0) + 1
        assert isinstance(sub, WSSubscriber)
        sub.send_text(b'{"type":"chat","text":"%s"}' % text)
        self.frames += 1
        return True

    async def _post(self, conn: HttpConnection, index: int, slot: int) -> bool:
        room = self.rooms[index]
        body = b'{"text":"%s"}' % self._text(room, slot, False)
        seq = room.seq
        self.posts += 1
        self.in_flight += 1
        try:
            async with asyncio.timeout(5.0):
                status, _ = await conn.request("POST", f"/api/rooms/{room.name}/messages", body)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()  # published or not: unknown, so its deliveries stay expected
            self._failed(type(exc).__name__)
            return False
        finally:
            self.in_flight -= 1
        if status != 202:
            room.void.add(seq)
            self.due -= len(room.members)
            self._failed(f"HTTP {status}")
            return False
        self.answered += 1
        return True

    def _failed(self, why: str) -> None:
        self.errors += 1
        self.failures[why] = self.failures.get(why, 0) + 1

    async def paced(self, rate: float, duration_s: float) -> int:
        """Publishes ``rate`` messages/s for ``duration_s`` (``stopping`` ends it early: the
        POSTs not yet sent are dropped, those in flight finish); returns how many went out."""
        total = max(1, round(rate * duration_s))
        slots: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        self._pending.clear()
        self.stopping = False
        sent = 0

        async def worker() -> None:
            nonlocal sent
            conn = HttpConnection(self.port, self.headers)
            try:
                while True:
                    slot, index = await slots.get()
                    self._pending.popleft()
                    self.lateness_s = max(self.lateness_s, (time.monotonic_ns() - slot) / 1e9)
                    sent += 1
                    ok = await self._post(conn, index, slot)
                    slots.task_done()
                    if not ok:
                        return
            finally:
                conn.close()

        workers = [asyncio.create_task(worker()) for _ in range(self.plan.post_connections)]
        try:
            start = time.monotonic_ns()
            for i in range(total):
                slot = start + round(i * 1e9 / rate)
                delay = (slot - time.monotonic_ns()) / 1e9
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                if self.stopping:
                    break
                index = self.rng.randrange(len(self.rooms))
                # Alternate by a running share, so any ws_share is met exactly over the run.
                if self.frames < self.plan.ws_share * (self.frames + self.posts + len(self._pending) + 1) \
                        and self._frame(index, slot):
                    sent += 1
                    continue
                self._pending.append(slot)
                slots.put_nowait((slot, index))
            while self.stopping and not slots.empty():  # drop what is not sent yet
                slots.get_nowait()
                self._pending.popleft()
                slots.task_done()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await slots.join()
        finally:
            self._pending.clear()
            self.cut += self.in_flight
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return sent


# -- one server's life -------------------------------------------------------------------


class RoomsSession:
    """The rooms and their members on one server, the load, and the measurements."""

    def __init__(self, server: Server, plan: RoomsPlan) -> None:
        self.server = server
        self.plan = plan
        self.recorder = Recorder()
        self.rooms = [Room(f"r{i}") for i in range(plan.rooms)]
        self.authenticated = server.spec.authenticated
        self.load = RoomsLoad(self.rooms, server.port,
                              token("bench-publisher") if self.authenticated else None, plan)

    def members(self) -> list[Subscriber]:
        return [s for room in self.rooms for s in room.members]

    async def connect(self, room_names: list[str], keep: bool = True, timeout_s: float = 180.0) -> float:
        """Opens ``per_room`` members in each named room (even: SSE, odd: WebSocket), at most
        ``connect_concurrency`` at a time, each its own user; seconds until all were welcomed."""
        plan = self.plan
        jobs: list[tuple[str, str, str]] = []  # (room, kind, path); tokens made before the clock
        for name in room_names:
            for i in range(plan.per_room):
                kind = "ws" if i % 2 else "sse"
                path = f"/{kind}/chat?room={name}"
                if self.authenticated:
                    path += f"&token={token(f'bench-{name}-{i}')}"
                jobs.append((name, kind, path))
        gate = asyncio.Semaphore(plan.connect_concurrency)
        opened: list[tuple[str, Subscriber]] = []

        async def one(name: str, kind: str, path: str) -> None:
            async with gate:
                sub = await open_subscriber(kind, self.recorder, self.server.port, path)
                opened.append((name, sub))

        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(one(*job) for job in jobs))
        except BaseException:
            for _, sub in opened:
                sub.close()
            raise
        elapsed = time.perf_counter() - start
        if keep:
            by_name = {room.name: room for room in self.rooms}
            for name, sub in opened:
                by_name[name].members.append(sub)
            self.load.ws_members = [[s for s in room.members if isinstance(s, WSSubscriber)]
                                    for room in self.rooms]
        else:
            for _, sub in opened:
                sub.close()
        return elapsed

    def close(self) -> None:
        for sub in self.members():
            sub.close()

    # -- delivery state ---------------------------------------------------------

    def oldest_age_s(self, floors: list[int] | None = None) -> float:
        """Age of the oldest message (after each room's floor) that some open member lacks."""
        now = time.monotonic_ns()
        unsent = self.load.oldest_unsent_slot_ns()
        worst_ns = 0 if unsent is None else now - unsent
        for i, room in enumerate(self.rooms):
            hi = room.seq
            floor = floors[i] if floors is not None else 0
            if hi <= floor:
                continue
            low = hi
            for sub in room.members:
                if sub.last_seq < low and not sub.closed:
                    low = min(low, room.caught_up(sub))
            if low < hi:  # the oldest message some member lacks: the one after max(low, floor)
                worst_ns = max(worst_ns, now - room.sent_ns[max(low, floor) + 1])
        return worst_ns / 1e9

    def closed(self) -> int:
        return sum(sub.closed for room in self.rooms for sub in room.members)

    async def drained(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.oldest_age_s() == 0.0:
                return True
            await asyncio.sleep(WATCH_EVERY_S)
        return False

    def losses(self) -> dict[str, int]:
        """Deliveries some open member should have had and never got (and the members closed)."""
        lost = expected = 0
        for room in self.rooms:
            for sub in room.members:
                if sub.closed:
                    continue
                should = room.seq - len(room.void) - room.sent_by.get(sub, 0)
                expected += should
                lost += max(0, should - sub.count)
        return {"lost": lost, "expected": expected, "closed": self.closed()}

    # -- measurements -------------------------------------------------------------

    async def probe(self, rate: float, duration_s: float) -> dict[str, Any]:
        """``Session.probe`` over every room: sustainable if no open member falls behind."""
        await self.drained(1.0)
        floors = [room.seq for room in self.rooms]
        closed = self.closed()
        load = self.load
        load.lateness_s = 0.0
        errors, answered = load.errors, load.answered
        task = asyncio.create_task(load.paced(rate, duration_s))
        start = time.monotonic()
        deadline = start + duration_s + MAX_AGE_S + 1.0
        samples: list[tuple[float, float]] = []
        reason = ""
        try:
            while not reason:
                await asyncio.sleep(WATCH_EVERY_S)
                now = time.monotonic()
                age = self.oldest_age_s(floors)
                if not task.done():
                    samples.append((now - start, age))
                if age > MAX_AGE_S:
                    reason = f"a message waited {age:.2f} s"
                elif self.closed() > closed:
                    reason = "members closed by the server"
                elif load.errors > errors:
                    reason = "POSTs failed or timed out"
                elif task.done() and age == 0.0:
                    break
                elif now > deadline:
                    reason = "not delivered in time"
        finally:
            # As Session.probe: stop, but let in-flight POSTs finish so no fan-out is cut
            # (3 s, not 1: a cut POST would show up as lost deliveries at the end).
            load.stopping = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    await asyncio.shield(task)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        slope = _slope(samples)
        if not reason and slope > MAX_SLOPE:
            reason = f"backlog growing ({slope:.2f} s/s)"
        return {"rate": round(rate, 1), "ok": not reason, "reason": reason,
                "worst_age_s": round(max((a for _, a in samples), default=0.0), 3),
                "slope": round(slope, 3), "post_lateness_s": round(load.lateness_s, 3),
                "answered": load.answered - answered}

    async def sustainable(self, start_rate: float, step: float, max_probes: int) -> dict[str, Any]:
        """``Session.sustainable``'s search: grow or shrink by ``step``, then bisect."""
        lo, hi = 0.0, float("inf")
        rate = start_rate
        probes: list[dict[str, Any]] = []
        grow = step
        for _ in range(max_probes):
            meter = Meter(self.server)
            result = await self.probe(rate, self.plan.probe_s)
            result.update({k: v for k, v in meter.read().items() if k != "wall_s"})
            probes.append(result)
            if result["ok"]:
                lo = rate
            else:
                hi = rate
                if result["answered"] == 0:
                    result["stuck"] = True  # not one POST answered: lower rates cannot pass
                    break
                # An overloaded server still holds frames and fan-outs the watchdog cannot see
                # (a frame not yet read has no seq at any member): the next probe would start
                # behind. Wait for its backlog to be written, as after the latency phase.
                await self.drained(2.0)
                await self.server.wait_idle(timeout_s=5.0)
            if hi == float("inf"):
                rate = lo * grow
                grow = max(grow, 1.6) * 1.25
            elif lo == 0.0:
                rate = hi / step
                if rate < start_rate / 20:
                    break
            elif hi / lo <= self.plan.precision:
                break
            else:
                rate = (lo * hi) ** 0.5
        passed = [p for p in probes if p["ok"] and p["rate"] == round(lo, 1)]
        at = passed[-1] if passed else {}
        return {"publishes_per_s": round(lo, 1), "deliveries_per_s": round(lo * self.fanout()),
                "capped": hi == float("inf"), "probes": probes,
                # the CPU at the sustainable rate (the highest passing probe)
                "server_cpu_pct": at.get("server_cpu_pct"),
                "generator_cpu_pct": at.get("generator_cpu_pct")}

    def fanout(self) -> float:
        """Deliveries per publish: every member for a POST, all but the sender for a frame."""
        return self.plan.per_room - self.plan.ws_share

    async def latency(self, rate: float, duration_s: float) -> dict[str, Any]:
        """Every delivery's latency at ``rate`` publishes/s after a warm-up (``Session.latency``)."""
        recorder = self.recorder
        await self.load.paced(rate, self.plan.latency_warmup_s)
        await self.drained(2.0)
        recorder.latencies_ms, recorder.arrival_ms, recorder.unstamped = [], [], 0
        self.load.lateness_s = 0.0
        before, due = sum(s.count for s in self.members()), self.load.due
        recorder.detail = True
        try:
            window = Meter(self.server)
            sent = await self.load.paced(rate, duration_s)
            cost = per_publish_ms(window.read(), sent)
            await self.drained(3.0)
        finally:
            recorder.detail = False
        run = report.latency_summary({"samples": recorder.latencies_ms,
                                      "arrival_samples": recorder.arrival_ms})
        recorder.latencies_ms, recorder.arrival_ms = [], []
        run.pop("curve", None)  # keep the arrival curve only: the JSON holds every run
        got = sum(s.count for s in self.members()) - before
        return {"publishes_per_s": rate, "sent": sent, **run, "unstamped": recorder.unstamped,
                "missing": max(0, self.load.due - due - got),
                "post_lateness_s": round(self.load.lateness_s, 3), "server_ms_per_publish": cost}

    async def inbound_cost(self, rate: float, duration_s: float) -> dict[str, Any]:
        """The latency phase's load without waiting for deliveries (the floor makes none):
        the server's CPU per publish at ``rate``."""
        await self.load.paced(rate, self.plan.latency_warmup_s)
        window = Meter(self.server)
        sent = await self.load.paced(rate, duration_s)
        measured = window.read()
        return {"publishes_per_s": rate, "sent": sent, "errors": self.load.errors,
                "server_ms_per_publish": per_publish_ms(measured, sent), **measured}


def per_publish_ms(measured: dict[str, Any], sent: int) -> float | None:
    """Milliseconds of server CPU per publish over a ``Meter`` window in which ``sent`` went out."""
    if not sent:
        return None
    return round(10 * measured["server_cpu_pct"] * measured["wall_s"] / sent, 4)


async def life(spec: ServerSpec, plan: RoomsPlan, log_dir: Path, hint: float | None) -> dict[str, Any]:
    """One fresh server: connect, latency, sustainable search, drain and losses."""
    if "REDIS_URL" in spec.env:
        spec = replace(spec, env={**spec.env,
                                  "REDIS_PREFIX": f"bench-rooms-{os.getpid()}-{secrets.token_hex(4)}:"})
    began = time.monotonic()
    async with _connected(spec, plan, log_dir) as (server, session, connect):
        meter = Meter(server)
        latency = await session.latency(plan.latency_rate, plan.latency_s)
        latency.update(meter.read())
        await server.wait_idle(timeout_s=5.0)  # a server that fell behind catches up first

        meter = Meter(server)
        if hint:
            sustainable = await session.sustainable(hint, 1.2, plan.later_probes)
            if not sustainable["publishes_per_s"]:
                # The first run's answer was out of this life's reach (a first search that never
                # failed stops at the generator's limit, not the server's): search afresh below it.
                tried = sustainable["probes"]
                sustainable = await session.sustainable(hint / 1.6, 1.6, plan.max_probes)
                sustainable["probes"] = tried + sustainable["probes"]
        else:
            sustainable = await session.sustainable(plan.first_rate, 1.6, plan.max_probes)
        search = meter.read()
        sustainable["search"] = search

        await session.drained(plan.drain_s)
        losses = session.losses()
        losses.update(posts=session.load.posts, frames=session.load.frames,
                      post_errors=session.load.errors, post_failures=session.load.failures,
                      posts_cut=session.load.cut)
        return {"connect": connect, "latency": latency, "sustainable": sustainable,
                "losses": losses, "code": server.version,
                "life_s": round(time.monotonic() - began, 1)}


async def floor_life(plan: RoomsPlan, log_dir: Path) -> dict[str, Any]:
    """The floor (``servers.FLOOR``) under the latency phase's load: every member connected,
    then POSTs and frames at ``plan.latency_rate``, each answered, none fanned out."""
    began = time.monotonic()
    async with _connected(FLOOR, plan, log_dir) as (_, session, connect):
        out = await session.inbound_cost(plan.latency_rate, plan.latency_s)
        return {**out, "connect_s": connect["seconds"], "life_s": round(time.monotonic() - began, 1)}


@contextlib.asynccontextmanager
async def _connected(spec: ServerSpec, plan: RoomsPlan,
                     log_dir: Path) -> AsyncIterator[tuple[Server, RoomsSession, dict[str, Any]]]:
    """A fresh server with every room's members connected (after a warm-up room), and the
    connect's figures; the members are closed and the server stopped on the way out."""
    server = Server(spec, plan.server_core, log_dir)
    session: RoomsSession | None = None
    try:
        await server.ready()
        session = RoomsSession(server, plan)
        await session.connect(["warm-up"], keep=False)  # warm the server's code paths
        meter = Meter(server)
        seconds = await session.connect([room.name for room in session.rooms])
        yield server, session, {"seconds": round(seconds, 2), "subscribers": plan.subscribers,
                                **meter.read()}
    finally:
        if session is not None:
            session.close()
        server.stop()


def _progress(out: dict[str, Any]) -> str:
    con, lat, sus, loss = out["connect"], out["latency"], out["sustainable"], out["losses"]
    loss = {**loss, "post_failures": f" {loss['post_failures']}" if loss["post_failures"] else ""}
    return (f"    [{out['life_s']} s] connect {con['seconds']} s | at {lat['publishes_per_s']:g} pub/s "
            f"p50 {lat.get('arrival_p50_ms')} p99 {lat.get('arrival_p99_ms')} ms at arrival | "
            f"sustainable {sus['publishes_per_s']:,} pub/s = {sus['deliveries_per_s']:,} deliv/s "
            f"({len(sus['probes'])} probes{', capped' if sus['capped'] else ''}) | CPU there: "
            f"server {sus['server_cpu_pct'] or '-'}%, generator {sus['generator_cpu_pct'] or '-'}% | "
            f"lost {loss['lost']} of {loss['expected']:,} ({loss['posts_cut']} POSTs cut, "
            f"{loss['post_errors']} failed{loss['post_failures']}), {loss['closed']} closed")


async def run(specs: list[ServerSpec], plan: RoomsPlan, log_dir: Path) -> dict[str, Any]:
    """``plan.runs`` runs over ``specs`` in order, each a fresh server: {name: [life, ...]}."""
    results: dict[str, list[dict[str, Any]]] = {spec.name: [] for spec in specs}
    hints: dict[str, float] = {}
    for n in range(plan.runs):
        for spec in specs:
            print(f"rooms run {n + 1}/{plan.runs} {spec.name:<8} {plan.rooms:,} rooms × {plan.per_room}",
                  flush=True)
            out = await life(spec, plan, log_dir, hints.get(spec.name))
            results[spec.name].append(out)
            if out["sustainable"]["publishes_per_s"]:  # else the next run searches afresh
                hints.setdefault(spec.name, out["sustainable"]["publishes_per_s"])
            print(_progress(out), flush=True)
        print(f"rooms run {n + 1}/{plan.runs} {FLOOR.name:<8} {plan.rooms:,} rooms × {plan.per_room}, "
              f"answers only", flush=True)
        floor = await floor_life(plan, log_dir)
        results.setdefault(FLOOR.name, []).append(floor)
        print(f"    [{floor['life_s']} s] {floor['server_ms_per_publish']} ms of server CPU per publish "
              f"at {floor['publishes_per_s']:g} pub/s ({floor['errors']} failed)", flush=True)
    return results


# -- the report ------------------------------------------------------------------------


# (key in the summary, label, unit, the value of one life)
METRICS: list[tuple[str, str, str, Any]] = [
    ("sustainable_pub_s", "sustainable (age<=0.5s)", "pub/s", lambda r: r["sustainable"]["publishes_per_s"]),
    ("sustainable_deliv_s", "  deliveries", "deliv/s", lambda r: r["sustainable"]["deliveries_per_s"]),
    ("sustainable_server_cpu_pct", "  server CPU there", "%", lambda r: r["sustainable"]["server_cpu_pct"]),
    ("sustainable_generator_cpu_pct", "  generator CPU there", "%",
     lambda r: r["sustainable"]["generator_cpu_pct"]),
    ("search_server_waited_pct", "  server waited for CPU (search)", "%",
     lambda r: r["sustainable"]["search"]["server_waited_pct"]),
    ("latency_p50_ms", "latency p50 at arrival", "ms", lambda r: r["latency"]["arrival_p50_ms"]),
    ("latency_p99_ms", "latency p99 at arrival", "ms", lambda r: r["latency"]["arrival_p99_ms"]),
    ("latency_missing", "  not delivered 3 s after", "deliv", lambda r: r["latency"]["missing"]),
    ("latency_post_lateness_s", "  POSTs behind their slots", "s", lambda r: r["latency"]["post_lateness_s"]),
    ("latency_server_cpu_pct", "  server CPU", "%", lambda r: r["latency"]["server_cpu_pct"]),
    ("latency_server_ms_per_publish", "  server CPU per publish", "ms",
     lambda r: r["latency"].get("server_ms_per_publish")),
    ("latency_server_waited_pct", "  server waited for CPU", "%",
     lambda r: r["latency"]["server_waited_pct"]),
    ("latency_generator_cpu_pct", "  generator CPU", "%", lambda r: r["latency"]["generator_cpu_pct"]),
    ("connect_s", "connect all members", "s", lambda r: r["connect"]["seconds"]),
    ("connect_server_cpu_pct", "  server CPU", "%", lambda r: r["connect"]["server_cpu_pct"]),
    ("connect_generator_cpu_pct", "  generator CPU", "%", lambda r: r["connect"]["generator_cpu_pct"]),
    ("lost", "lost (after a drain)", "deliv", lambda r: r["losses"]["lost"]),
    ("posts_cut", "  POSTs cut after a failed probe", "", lambda r: r["losses"]["posts_cut"]),
    ("closed", "  members closed by the server", "", lambda r: r["losses"]["closed"]),
]


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians [min–max] over the runs of each server: {server: {metric key: spread}}."""
    return {name: {key: report.spread([get(r) for r in lives]) for key, _, _, get in METRICS}
            for name, lives in results.items()}


def table(summary: dict[str, Any], plan: dict[str, Any]) -> str:
    """Markdown-compatible: a row per metric, a column per server (medians [min–max])."""
    names = list(summary)
    lines = [f"| {plan['rooms']:,} rooms × {plan['per_room']}, latency at {plan['latency_rate']:,g} "
             "pub/s | unit | " + " | ".join(f"{n} median [min–max]" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for key, label, unit, _ in METRICS:
        cells = " | ".join(report.spread_cell(summary[n].get(key)) for n in names)
        lines.append(f"| {label} | {unit} | {cells} |")
    return "\n".join(lines)


def floor_lines(summary: dict[str, Any], floor: list[dict[str, Any]]) -> list[str]:
    """The floor's CPU per publish at the latency phase's rate, and Node and hubbub against it."""
    cost = report.spread([life["server_ms_per_publish"] for life in floor])
    if not cost:
        return []
    line = (f"the floor (Hypercorn answering each POST and frame, no fan-out): "
            f"{report.spread_cell(cost)} ms of server CPU per publish")
    for name in ("node", HUBBUB.name):
        other = summary.get(name, {}).get("latency_server_ms_per_publish")
        if other and cost["median"]:
            line += f"; {name} {other['median']:.3f} ms, {other['median'] / cost['median']:.2f}× the floor"
    return [line]


def redis_ratio(summary: dict[str, Any]) -> list[str]:
    """hubbub on Redis over hubbub on memory (medians of the same runs), when both ran."""
    memory, redis = summary.get(HUBBUB.name), summary.get(REDIS_NAME)
    if not memory or not redis:
        return []
    out = []
    for key, label in (("sustainable_pub_s", "sustainable publishes/s"),
                       ("latency_p99_ms", "p99 at arrival, fixed rate")):
        low, high = memory.get(key), redis.get(key)
        if low and high and low["median"]:
            out.append(f"Redis / memory, many rooms, {label}: {high['median'] / low['median']:.2f} "
                       f"({report.spread_cell(high)} / {report.spread_cell(low)})")
    return out


def notes(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = []
    for name, lives in results.items():
        worst = max((p.get("generator_cpu_pct") or 0 for r in lives
                     for p in [*r["sustainable"]["probes"], r["latency"], r["connect"]]), default=0)
        if worst > GENERATOR_LIMIT_PCT:
            out.append(f"warning: against {name} the generator reached {worst:g}% of its core "
                       f"(> {GENERATOR_LIMIT_PCT:g}%): its figures may be the generator's limit")
        if any(r["sustainable"]["capped"] for r in lives):
            out.append(f"note: {name}'s sustainable search never failed in some run: a lower bound")
        rates = [r["sustainable"]["publishes_per_s"] for r in lives]
        fixed = lives[0]["latency"]["publishes_per_s"] if lives else 0
        if rates and statistics.median(rates) < fixed:
            out.append(f"note: {name}'s latency was measured above its sustainable rate "
                       f"({fixed:g} > {statistics.median(rates):g} pub/s): its p50/p99 are queueing")
        waited = max((r["sustainable"]["search"]["generator_waited_pct"] for r in lives), default=0)
        if waited > 10:
            out.append(f"warning: against {name} the generator waited {waited:g}% of the time for "
                       "its core: other work on the machine, noisy figures")
    return out


def main(plan: RoomsPlan, meta: dict[str, Any], path: Path,
         specs: list[ServerSpec] | None = None) -> int:
    """Runs the scenario, writes ``path`` (JSON) and prints the table; for ``python -m bench``."""
    specs = specs or default_specs()
    on_redis = HUBBUB in specs and shutil.which("redis-server") is not None
    if HUBBUB in specs and not on_redis:
        print("note: redis-server is not on PATH: hubbub on Redis is not run", flush=True)
    names = [s.name for s in specs] + ([REDIS_NAME] if on_redis else [])
    print(f"bench rooms ({meta['mode']}): {plan.rooms:,} rooms × {plan.per_room} members, "
          f"{plan.runs} run(s) over {', '.join(names)}; other work kept the machine "
          f"{meta.get('busy_before_pct')}% busy before starting", flush=True)
    started, cpu0 = time.monotonic(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-rooms-") as tmp:
        try:
            results = asyncio.run(_run_with_redis(specs, plan, Path(tmp)) if on_redis
                                  else run(specs, plan, Path(tmp)))
        except Exception:
            for log in sorted(Path(tmp).glob("*.log"))[-2:]:
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
    floor = results.pop(FLOOR.name, [])
    wall = time.monotonic() - started
    meta = {**meta, "plan": plan.__dict__, "wall_s": round(wall, 1),
            "generator_cpu_pct_overall": round(100 * (time.process_time() - cpu0) / wall, 1),
            "code_versions": sorted({r["code"] for lives in results.values() for r in lives})}
    summary = summarise(results)
    report.write_json(path, {"meta": meta, "summary": summary, "runs": results, "floor": floor})
    print()
    print(table(summary, plan.__dict__))
    for line in [*floor_lines(summary, floor), *redis_ratio(summary), *notes(results)]:
        print(line)
    if len(meta["code_versions"]) > 1:
        print(f"warning: the code changed during the run ({', '.join(meta['code_versions'])})")
    print(f"wall time {wall:.0f} s; wrote {path}")
    return 0


async def _run_with_redis(specs: list[ServerSpec], plan: RoomsPlan, log_dir: Path) -> dict[str, Any]:
    """``run`` with hubbub on a private Redis right after hubbub on memory."""
    redis = servers.RedisServer(servers.generator_core(), log_dir)
    try:
        await redis.ready()
        at = specs.index(HUBBUB) + 1
        return await run([*specs[:at], with_redis(HUBBUB, redis.url), *specs[at:]],
                         plan, log_dir)
    finally:
        redis.stop()


def reprint(data: dict[str, Any]) -> str:
    """The table of a results file (``--table --only rooms``)."""
    return "\n".join([table(data["summary"], data["meta"]["plan"]),
                      *floor_lines(data["summary"], data.get("floor", [])), *redis_ratio(data["summary"])])



def plan_for(quick: bool, runs: int | None, server_core: int | None) -> RoomsPlan:
    """The plan ``python -m bench [--quick] [--runs N] --only rooms`` runs."""
    plan = QUICK_ROOMS if quick else RoomsPlan()
    return replace(plan, runs=runs or plan.runs, server_core=server_core)
