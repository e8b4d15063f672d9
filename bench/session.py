"""One server's life under load: its subscribers, its publisher, and the measurements on them.

A session may also span several servers sharing one hub (the scale-out scenario): the
subscribers of each kind are spread over them in turn, the publisher's connections too,
and the CPU figures are summed over them.

Every wait is bounded in time, every loop in count. The watchdog that decides
"sustainable" looks at the oldest message some reading subscriber still lacks: the
lowest ``last_seq`` over the readers, aged by the publisher's ``sent_ns``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.clients import Recorder, Subscriber, open_subscriber
from bench.publisher import Publisher
from bench.servers import Server, core_times, token

ROOM = "lobby"
MAX_AGE_S = 0.5  # the sustainable criterion: nothing undelivered for longer than this
MAX_SLOPE = 0.05  # ... and the oldest undelivered message's age must not keep growing
WATCH_EVERY_S = 0.02


def _servers(server: Server | Sequence[Server]) -> list[Server]:
    return [server] if isinstance(server, Server) else list(server)


@dataclass
class Meter:
    """Wall time and the CPU of the generator (this process) and of the server(s), over a phase.

    With several servers, ``server_*`` are sums (so may pass 100%) and ``server_cpu_pct_each``
    lists each one's share. Servers under a CPU quota add ``server_throttled_pct`` (summed;
    that time is also in ``server_waited_pct``: runnable, held back by the quota).
    ``core_softirq_pct`` and ``core_idle_pct``: the server core's time in softirq (mostly the
    loopback TCP receive work for what the server sends, charged to no process) and idle.
    """

    server: Server | Sequence[Server]
    wall: float = field(default_factory=time.monotonic)
    gen: float = field(default_factory=time.process_time)
    srv: list[float] = field(default_factory=list)
    wait: float = 0.0
    gen_wait: float = 0.0
    throttled: float = 0.0
    core_ticks: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.servers = _servers(self.server)
        cores = {s.core for s in self.servers}
        self.core = cores.pop() if len(cores) == 1 else None
        self.core_ticks = core_times(self.core) if self.core is not None else []
        self.srv = [s.cpu_s() for s in self.servers]
        self.wait = sum(s.run_wait_s() for s in self.servers)
        self.gen_wait = own_run_wait_s()
        self.throttled = sum(s.throttled_s() for s in self.servers)

    def read(self) -> dict[str, Any]:
        """CPU use in % of one core; ``server_waited_pct``: runnable but another process had the core."""
        wall = max(time.monotonic() - self.wall, 1e-9)
        each = [round(100 * (s.cpu_s() - before) / wall, 1) for s, before in zip(self.servers, self.srv,
                                                                                strict=True)]
        wait = sum(s.run_wait_s() for s in self.servers)
        out: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "generator_cpu_pct": round(100 * (time.process_time() - self.gen) / wall, 1),
            "server_cpu_pct": round(sum(each), 1),
            "server_waited_pct": round(100 * (wait - self.wait) / wall, 1),
            "generator_waited_pct": round(100 * (own_run_wait_s() - self.gen_wait) / wall, 1)}
        if len(each) > 1:
            out["server_cpu_pct_each"] = each
        if any(s.quota is not None for s in self.servers):
            throttled = sum(s.throttled_s() for s in self.servers) - self.throttled
            out["server_throttled_pct"] = round(100 * throttled / wall, 1)
        if self.core is not None and self.core_ticks:
            ticks = [b - a for a, b in zip(self.core_ticks, core_times(self.core), strict=False)]
            total = max(sum(ticks), 1)
            if len(ticks) == 8:
                out["core_softirq_pct"] = round(100 * ticks[6] / total, 1)
                out["core_idle_pct"] = round(100 * (ticks[3] + ticks[4]) / total, 1)
        return out


def own_run_wait_s() -> float:
    """Seconds this process was runnable but waited for its core."""
    try:
        return int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Probe:
    rate: float
    ok: bool
    reason: str
    worst_age_s: float
    slope: float
    sent: int
    post_lateness_s: float  # how far the POSTs fell behind their slots
    answered: int  # POSTs answered during the probe and the second after it


class Session:
    """Subscribers and a publisher on one server, or on several serving the same hub."""

    def __init__(self, server: Server | Sequence[Server]) -> None:
        self.servers = _servers(server)
        self.recorder = Recorder()
        self.subs: list[Subscriber] = []
        self._authenticated = self.servers[0].spec.authenticated
        self._users = 0  # subscribers opened so far: each is its own user
        self.publisher = Publisher([s.port for s in self.servers], ROOM,
                                   token("bench-publisher") if self._authenticated else None)
        self._placed: dict[str, int] = {}  # subscribers of each kind opened so far

    def _port(self, kind: str) -> int:
        """Each kind in turn over the servers: a 50/50 mix puts half of each kind on each."""
        n = self._placed.get(kind, 0)
        self._placed[kind] = n + 1
        return self.servers[n % len(self.servers)].port

    def cpu_s(self) -> float:
        return sum(s.cpu_s() for s in self.servers)

    # -- connections ---------------------------------------------------------

    def _paths(self, kinds: list[str]) -> list[str]:
        """A path per subscriber, each with its own user's token, as in a real room: every
        subscriber's join is announced to the room (one user for all would announce one)."""
        paths = []
        for kind in kinds:
            path = f"/{'ws' if kind == 'ws' else 'sse'}/chat?room={ROOM}"  # h2sse: SSE over HTTP/2
            if self._authenticated:
                self._users += 1
                path += f"&token={token(f'bench-{self._users}')}"
            paths.append(path)
        return paths

    async def connect(self, kinds: list[str], stall: bool = False, concurrency: int = 100,
                      keep: bool = True, timeout_s: float = 60.0,
                      ports: list[int] | None = None) -> float:
        """Opens one subscriber per entry of ``kinds`` (at most ``concurrency`` at a time).

        ``ports``: the server of each (default: each kind in turn over the servers).
        Returns the seconds until every one of them had its welcome.
        """
        gate = asyncio.Semaphore(concurrency)
        opened: list[Subscriber] = []
        if ports is None:
            ports = [self._port(kind) for kind in kinds]
        paths = self._paths(kinds)  # the tokens are made before the clock starts

        async def one(kind: str, port: int, path: str) -> None:
            async with gate:
                sub = await open_subscriber(kind, self.recorder, port, path, stall=stall)
                sub.last_seq = self.publisher.seq  # it can only miss what comes next
                opened.append(sub)

        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(one(kind, port, path) for kind, port, path
                                       in zip(kinds, ports, paths, strict=True)))
        except BaseException:
            for sub in opened:
                sub.close()
            raise
        elapsed = time.perf_counter() - start
        if keep:
            self.subs.extend(opened)
        else:
            for sub in opened:
                sub.close()
        return elapsed

    def readers(self) -> list[Subscriber]:
        return [s for s in self.subs if not s.stall]

    async def restore(self) -> int:
        """Replaces readers the server closed (slow consumers), so the next probe has them all."""
        gone = [s for s in self.readers() if s.closed]
        if gone:
            self.subs = [s for s in self.subs if s not in gone]
            await self.connect([s.kind for s in gone], ports=[s.port for s in gone])
        return len(gone)

    def close(self) -> None:
        for sub in self.subs:
            sub.close()
        self.subs = []

    # -- delivery state --------------------------------------------------------

    def delivered(self, readers: list[Subscriber]) -> int:
        return sum(s.count for s in readers)

    def oldest_age_s(self, readers: list[Subscriber], floor: int) -> float:
        """Age of the oldest message (after ``floor``) that some reader has not received."""
        now = time.monotonic_ns()
        unsent = self.publisher.oldest_unsent_slot_ns()
        age = 0.0 if unsent is None else (now - unsent) / 1e9
        hi = self.publisher.seq
        low = max(min(s.last_seq for s in readers), floor)
        if low < hi:
            age = max(age, (now - self.publisher.sent_ns[low + 1]) / 1e9)
        return age

    async def drained(self, readers: list[Subscriber], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(s.last_seq >= self.publisher.seq or s.closed for s in readers):
                return True
            await asyncio.sleep(WATCH_EVERY_S)
        return False

    async def settle(self, readers: list[Subscriber], quiet_s: float, timeout_s: float) -> None:
        """Waits until deliveries stop coming in (or ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        last, last_change = self.delivered(readers), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last_change < quiet_s:
            await asyncio.sleep(WATCH_EVERY_S)
            now = self.delivered(readers)
            if now != last:
                last, last_change = now, time.monotonic()

    # -- measurements ----------------------------------------------------------

    async def probe(self, rate: float, duration_s: float) -> Probe:
        """Publishes at ``rate`` for ``duration_s``: sustainable if every reader keeps up."""
        readers = [s for s in self.readers() if not s.closed]
        await self.drained(readers, 1.0)
        floor = self.publisher.seq
        self.publisher.lateness_s = 0.0
        errors, answered = self.publisher.errors, self.publisher.answered
        task = asyncio.create_task(self.publisher.paced(rate, duration_s))
        start = time.monotonic()
        deadline = start + duration_s + MAX_AGE_S + 1.0
        samples: list[tuple[float, float]] = []
        reason = ""
        try:
            while not reason:
                await asyncio.sleep(WATCH_EVERY_S)
                now = time.monotonic()
                age = self.oldest_age_s(readers, floor)
                if not task.done():
                    samples.append((now - start, age))
                if age > MAX_AGE_S:
                    reason = f"a message waited {age:.2f} s"
                elif any(s.closed for s in readers):
                    reason = f"{sum(s.closed for s in readers)} readers closed by the server"
                elif self.publisher.errors > errors:
                    reason = "POSTs failed or timed out"
                elif task.done() and age == 0.0:
                    break
                elif now > deadline:
                    reason = "not delivered in time"
        finally:
            # Stop posting, but let in-flight POSTs finish (at most 1 s): cancelling them could
            # cut a fan-out short and lose messages the next probe would then wait for.
            self.publisher.stopping = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(task)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        slope = _slope(samples)
        if not reason and slope > MAX_SLOPE:
            reason = f"backlog growing ({slope:.2f} s/s)"
        worst = max((a for _, a in samples), default=0.0)
        return Probe(rate, not reason, reason, worst, slope, self.publisher.seq - floor,
                     self.publisher.lateness_s, self.publisher.answered - answered)

    async def sustainable(self, start_rate: float, duration_s: float, max_probes: int,
                          step: float = 1.6, precision: float = 1.1) -> dict[str, Any]:
        """The highest rate that passes ``probe``: grow or shrink by ``step``, then bisect."""
        lo, hi = 0.0, float("inf")
        rate = start_rate
        probes: list[dict[str, Any]] = []
        grow = step
        for _ in range(max_probes):
            meter = Meter(self.servers)
            result = await self.probe(rate, duration_s)
            cpu = meter.read()
            probes.append({"rate": round(rate, 2), "ok": result.ok, "reason": result.reason,
                           "worst_age_s": round(result.worst_age_s, 3),
                           "slope": round(result.slope, 3),
                           "post_lateness_s": round(result.post_lateness_s, 3),
                           **{k: v for k, v in cpu.items() if k != "wall_s"}})
            if result.ok:
                lo = rate
            else:
                hi = rate
                if result.answered == 0:
                    # Not one POST answered in the probe and 1 s after: the server is blocked
                    # (a publisher stuck on a stalled socket); lower rates cannot pass.
                    probes[-1]["stuck"] = True
                    break
                await self.restore()
                await self.drained(self.readers(), 1.0)
            if hi == float("inf"):
                rate = lo * grow
                grow = max(grow, 1.6) * 1.25  # passing again and again: stride out
            elif lo == 0.0:
                rate = hi / step
                if rate < start_rate / 20:
                    break
            elif hi / lo <= precision:
                break
            else:
                rate = (lo * hi) ** 0.5
        n = len(self.readers())
        # capped: no probe failed, so the true figure is higher than reported.
        return {"rate": round(lo, 2), "deliveries_per_s": round(lo * n), "readers": n,
                "capped": hi == float("inf"), "probes": probes}

    async def latency(self, rate: float, duration_s: float) -> dict[str, Any]:
        """Every delivery's latency at ``rate`` messages/s (after a short warm-up), measured twice.

        ``samples`` (read): when the generator parsed the message − its send stamp; one
        process reads every socket in turn, so this includes the generator's serial reading.
        ``arrival_samples``: the kernel's receive timestamp of the read that completed the
        message (``SO_TIMESTAMPNS``) − its send stamp: what a client on its own machine would
        see. Both in ms, on CLOCK_REALTIME (see ``bench/clients.py``). ``unstamped``:
        deliveries whose read came without a kernel timestamp (arrival = read time).
        """
        readers = self.readers()
        recorder = self.recorder
        await self.publisher.paced(rate, min(0.5, duration_s / 4))
        await self.drained(readers, 2.0)
        floor = self.publisher.seq
        recorder.latencies_ms, recorder.arrival_ms, recorder.unstamped = [], [], 0
        recorder.detail = True
        try:
            sent = await self.publisher.paced(rate, duration_s)
            await self.drained(readers, 2.0)
        finally:
            recorder.detail = False
        samples, arrival = recorder.latencies_ms, recorder.arrival_ms
        recorder.latencies_ms, recorder.arrival_ms = [], []
        expected = (self.publisher.seq - floor) * len(readers)
        return {"sent": sent, "samples": samples, "arrival_samples": arrival,
                "unstamped": recorder.unstamped, "missing": max(0, expected - len(samples))}

    async def saturation(self, duration_s: float, max_messages: int, warmup_s: float) -> dict[str, Any]:
        """Deliveries/s while the publisher posts back to back; then what never arrived."""
        readers = [s for s in self.readers() if not s.closed]
        await self.drained(readers, 1.0)
        floor = self.publisher.seq
        before = self.delivered(readers)
        task = asyncio.create_task(self.publisher.flat_out(duration_s, max_messages))
        await asyncio.sleep(warmup_s)
        t0, c0, cpu0 = time.monotonic(), self.delivered(readers), self.cpu_s()
        await task
        t1, c1, cpu1 = time.monotonic(), self.delivered(readers), self.cpu_s()
        await self.settle(readers, quiet_s=0.3, timeout_s=2.0)
        published = self.publisher.seq - floor
        expected = published * len(readers)
        received = self.delivered(readers) - before
        return {"deliveries_per_s": round((c1 - c0) / max(t1 - t0, 1e-9)),
                # Robust to a shared machine: what one second of the server's CPU delivers.
                "deliveries_per_cpu_s": round((c1 - c0) / max(cpu1 - cpu0, 1e-3)),
                "published": published, "posts_per_s": round(published / duration_s, 1),
                "lost_pct": round(100 * (1 - received / expected), 2) if expected else None,
                "readers_closed": sum(s.closed for s in readers)}


def _slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of age over time, past the first 0.3 s (s of age per s)."""
    points = [(t, a) for t, a in samples if t > 0.3]
    if len(points) < 10:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_a = sum(a for _, a in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (a - mean_a) for t, a in points) / var if var else 0.0
