"""The reconnect storm after a deploy: ``python -m bench --only storm``.

5,000 subscribers (quick: 500), half SSE and half WebSocket, each its own user, spread over
``StormPlan.rooms`` rooms; a publisher POSTs 20 messages/s in all, round robin over the rooms,
each with an ``Idempotency-Key`` and retried (bounded) until it is accepted. hubbub runs on a
private ``redis-server`` so its history outlives the process. After a steady state the server
is replaced: SIGTERM, and once the process has exited a new one on the same port. The clients
come back as ``static/hubbub.js`` does (WebSocket 1012: 500 ms + up to 5 s; an SSE stream's
end: its last ``retry:``; a refusal: the jittered exponential backoff) and resume from the
last id they saw (``?since=`` / ``Last-Event-ID``). Every client keeps the seqs it got, so
losses and duplicates are counted exactly, per subscriber. The naive baseline goes through
the same storm without resume or Redis: what its clients never receive is what a deploy
costs it.

Clocks: send times (in the text), kernel receive timestamps and the phase marks are all
CLOCK_REALTIME ns (``time.time_ns()``), so every figure is a difference on one clock.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import random
import secrets
import signal
import socket
import sys
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench import report
from bench.clients import MARK, SO_TIMESTAMPNS, Recorder, SSESubscriber, Subscriber, WSSubscriber
from bench.publisher import HttpConnection
from bench.servers import BASELINE, HUBBUB, RedisServer, Server, ServerSpec, generator_core, token
from bench.session import Meter, own_run_wait_s

# static/hubbub.js: minDelayMs, maxDelayMs, RESTART_SPREAD_MS, STABLE_MS
MIN_DELAY_S = 0.5
MAX_DELAY_S = 20.0
RESTART_SPREAD_S = 5.0
STABLE_S = 5.0
# hubbub.js drops a connection with no welcome 10 s after opening it (connect included);
# a SYN lost to a full listen backlog is retried by the kernel within that time.
WELCOME_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 200  # per client: a bound, never reached in a sane run
# Per message: past hubbub's PENDING_TTL_S (60 s), after which a key claimed by a request the
# old process never finished is free again (until then a retry gets 409).
POST_DEADLINE_S = 75.0
POST_ATTEMPTS = 100
RETRYABLE = {409, 429, 502, 503}  # in progress (the same key), limited, restarting
_TIMESPEC_SIZE = 16
# The steady window closes 1 s before SIGTERM: a message sent just before it may be cut off
# by the drain and come with the replay, which is the storm's latency, not the steady state's.
STEADY_MARGIN_NS = 1_000_000_000


@dataclass(frozen=True)
class StormPlan:
    subscribers: int = 5000
    # Ten rooms of 500: every message still fans out to hundreds, hundreds of cursors replay
    # one room's history at once, and a room is past PRESENCE_JOIN_LIMIT (100), so the storm's
    # joins go out as one presence frame per room and interval, as in a big live event.
    rooms: int = 10
    rate: float = 20.0  # messages/s in all
    warm_s: float = 1.0  # publishing before the steady window opens
    steady_s: float = 10.0
    after_s: float = 30.0  # latency window after the new process listens
    baseline_steady_s: float = 5.0  # the baseline: only its losses and its return matter
    baseline_after_s: float = 10.0
    settle_s: float = 5.0  # at the end: for the last messages to arrive
    back_timeout_s: float = 60.0
    exit_timeout_s: float = 30.0  # SIGKILL past this, as a platform does (Heroku: 30 s)
    # The naive baseline takes long to exit (up to ~40 s at 5,000 here) though all its clients
    # are gone within its first seconds: killed sooner, to keep the run short.
    baseline_exit_timeout_s: float = 10.0
    runs: int = 3


QUICK_STORM = StormPlan(subscribers=500, steady_s=2.0, after_s=4.0, baseline_steady_s=2.0,
                        baseline_after_s=2.0, settle_s=2.0, back_timeout_s=30.0, runs=1)


def backoff(step: int) -> float:
    """static/hubbub.js backoff(): a floor of 500 ms plus full jitter over min(20 s, 500 ms * 2^step)."""
    jitter = min(MAX_DELAY_S, MIN_DELAY_S * 2 ** min(max(step, 0), 16))
    return min(MAX_DELAY_S, MIN_DELAY_S + random.random() * jitter)


def _arrival_ns(anc: list[tuple[int, int, bytes]]) -> int:
    """The kernel receive timestamp of the last read (its own read time if it had none)."""
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC_SIZE:
            sec, nsec = int.from_bytes(data[:8], sys.byteorder), int.from_bytes(data[8:16], sys.byteorder)
            return sec * 1_000_000_000 + nsec
    return time.time_ns()


def _json_id(payload: bytes) -> str | None:
    """The ``"id"`` of a JSON frame (hubbub writes no spaces, the baseline one after ':')."""
    at = payload.find(b'"id":')
    if at < 0:
        return None
    start = payload.find(b'"', at + 5) + 1
    end = payload.find(b'"', start)
    return payload[start:end].decode() if start > 0 and end > 0 else None


def _seq(payload: bytes, pos: int) -> int:
    return int(payload[pos + 2:payload.index(b":", pos)])


class Client:
    """One user in one room across its connections: what it got, its cursor, its reconnects."""

    def __init__(self, index: int, kind: str, room: str, port: int, path: str, resume: bool) -> None:
        self.index = index
        self.kind = kind
        self.room = room
        self.port = port
        self.path = path  # without the cursor
        self.resume = resume
        self.got: dict[int, int] = {}  # seq -> arrival ns of its first copy
        self.dups: list[tuple[int, int]] = []  # (seq, arrival ns) of every extra copy
        self.last_id: str | None = None
        self.retry_ms: int | None = None  # the last SSE ``retry:``
        self.welcomes: list[int] = []  # arrival ns of every welcome
        self.recovered: list[bytes] = []  # the welcome's "recovered" of every connection
        self.resyncs = 0
        self.attempts = 0
        self.step = 0
        self.ends: list[tuple[int, str]] = []  # (CLOCK_REALTIME ns, why) of every end or failure
        self.conn: _WSConn | _SSEConn | None = None
        self.stopped = False
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._guard: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._opened_ns = 0

    def open(self) -> None:
        """A new connection attempt (from a timer, or the first connect)."""
        self._timer = None
        if self.stopped:
            return
        if self.attempts >= MAX_ATTEMPTS:
            self.stopped = True
            self.ends.append((time.time_ns(), "gave up"))
            return
        self.attempts += 1
        cls = _WSConn if self.kind == "ws" else _SSEConn
        conn = cls(self)
        self.conn = conn
        self._opened_ns = time.time_ns()
        self._guard = self._loop.call_later(WELCOME_TIMEOUT_S, self._no_welcome, conn)
        self._task = asyncio.ensure_future(self._connect(conn))

    async def _connect(self, conn: _WSConn | _SSEConn) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(WELCOME_TIMEOUT_S + 1):  # a bound; the guard acts first
                await self._loop.sock_connect(sock, ("127.0.0.1", self.port))
        except (OSError, TimeoutError) as exc:
            sock.close()
            self.ended(conn, "refused" if isinstance(exc, ConnectionRefusedError) else "connect failed")
            return
        except asyncio.CancelledError:
            sock.close()
            raise
        if self.stopped or conn is not self.conn:
            sock.close()
            return
        conn.start(sock)

    def _no_welcome(self, conn: _WSConn | _SSEConn) -> None:
        self._guard = None
        if conn is not self.conn or conn.was_welcomed:
            return
        conn.why = "no welcome"
        if conn.sock is None:  # still connecting
            if self._task is not None:
                self._task.cancel()
            self.ended(conn, "no welcome")
        else:
            conn.close()

    def welcome(self, conn: _WSConn | _SSEConn, arrival: int, payload: bytes) -> None:
        if conn is not self.conn:
            return
        conn.was_welcomed = True
        self.welcomes.append(arrival)
        at = payload.find(b'"recovered":')
        self.recovered.append(payload[at + 12:at + 17].rstrip(b",}") if at >= 0 else b"-")
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def chat(self, seq: int, message_id: str | None, arrival: int) -> None:
        if seq in self.got:
            self.dups.append((seq, arrival))
        else:
            self.got[seq] = arrival
        if message_id is not None:
            self.last_id = message_id

    def ended(self, conn: _WSConn | _SSEConn, why: str) -> None:
        """A connection closed or failed: when to try again, as static/hubbub.js decides."""
        if conn is not self.conn:
            return
        self.conn = None
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None
        if self.stopped:
            return
        if conn.was_welcomed and time.time_ns() - self._opened_ns >= STABLE_S * 1e9:
            self.step = 0  # a connection that held resets the backoff
        code = conn.close_code
        if self.kind == "ws" and code == 1012:
            delay = MIN_DELAY_S + random.random() * RESTART_SPREAD_S
            why = "close 1012"
        elif self.kind == "sse" and conn.was_welcomed and self.retry_ms is not None:
            delay = self.retry_ms / 1000  # EventSource: the stream's last retry: hint
            why = "stream ended"
        else:
            delay = backoff(self.step)
            self.step += 1
            if code is not None:
                why = f"close {code}"
        self.ends.append((time.time_ns(), why))
        self._timer = self._loop.call_later(delay, self.open)

    def request_path(self) -> str:
        if self.resume and self.last_id is not None and self.kind == "ws":
            return f"{self.path}&since={quote(self.last_id, safe='')}"
        return self.path

    def stop(self) -> None:
        self.stopped = True
        for handle in (self._timer, self._guard):
            if handle is not None:
                handle.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.conn is not None:
            self.conn.close()
        self.conn = None


_RECORDER = Recorder()  # required by the Subscriber base; the storm keeps its own records


class _ClientConn(Subscriber):
    """What a ``Client``'s connection adds on either wire: its client, and why it ended."""

    def __init__(self, client: Client) -> None:
        super().__init__(_RECORDER, client.request_path(), f"127.0.0.1:{client.port}")
        self.client = client
        self.was_welcomed = False
        self.why = ""
        self.welcomed.add_done_callback(_retrieve)

    def _lost(self, exc: Exception | None) -> None:
        super()._lost(exc)
        why = self.why or ("closed" if self.was_welcomed else f"HTTP {self.status}" if self.status
                           else "reset" if exc is not None else "EOF before welcome")
        self.client.ended(self, why)


class _WSConn(_ClientConn, WSSubscriber):
    """One WebSocket connection of a ``Client``: every chat frame's seq and id, the welcome, 1012."""

    def body_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        n = len(data)
        i = 0
        arrival = 0
        while n - i >= 2:
            length = data[i + 1] & 0x7F
            head = 2
            if length == 126:
                if n - i < 4:
                    break
                length = int.from_bytes(data[i + 2:i + 4], "big")
                head = 4
            elif length == 127:
                if n - i < 10:
                    break
                length = int.from_bytes(data[i + 2:i + 10], "big")
                head = 10
            end = i + head + length
            if end > n:
                break
            opcode = data[i] & 0x0F
            if opcode <= 2:
                payload = data[i + head:end]
                arrival = arrival or _arrival_ns(self._anc)
                pos = payload.find(MARK)
                if pos >= 0:
                    self.client.chat(_seq(payload, pos), _json_id(payload), arrival)
                elif b'"type":"welcome"' in payload or b'"type": "welcome"' in payload:
                    self.client.welcome(self, arrival, payload)
                elif b'"type":"resync"' in payload:
                    self.client.resyncs += 1
            elif opcode == 8:
                if length >= 2:
                    self.close_code = int.from_bytes(data[i + head:i + head + 2], "big")
                self.close()
                return
            elif opcode == 9:
                self._send(0xA, data[i + head:end])
            i = end
        if i < n:
            self._buf = data[i:]


class _SSEConn(_ClientConn, SSESubscriber):
    """One event stream of a ``Client``: de-chunks the body, reads ``id:``, ``retry:`` and data."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._chunked = False
        self._raw = b""  # chunked framing not parsed yet
        self._left = 0  # bytes left in the current chunk
        self._finished = False  # the last chunk came: the stream ended

    def request(self) -> bytes:
        cursor = ""
        if self.client.resume and self.client.last_id is not None:
            cursor = f"Last-Event-ID: {self.client.last_id}\r\n"
        return (f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: text/event-stream\r\n"
                f"Cache-Control: no-cache\r\n{cursor}\r\n").encode()

    def head_ok(self, head: bytes) -> bool:
        self._chunked = b"transfer-encoding: chunked" in head.lower()
        return self.status == 200

    def _dechunk(self, data: bytes) -> bytes:
        """The payload of the chunks in ``data`` (a partial one carried to the next read)."""
        buf = self._raw + data if self._raw else data
        out: list[bytes] = []
        i, n = 0, len(buf)
        while i < n and not self._finished:
            if self._left > 0:
                take = min(self._left, n - i)
                out.append(buf[i:i + take])
                i += take
                self._left -= take
                if self._left:
                    break
                self._left = -2  # the CRLF after the chunk's data
            if self._left == -2:
                if n - i < 2:
                    break
                i += 2
                self._left = 0
            eol = buf.find(b"\r\n", i)
            if eol < 0:
                break
            size = int(buf[i:eol].split(b";", 1)[0], 16)
            i = eol + 2
            if size == 0:
                self._finished = True
            self._left = size
        self._raw = buf[i:]
        return b"".join(out)

    def body_received(self, data: bytes) -> None:
        body = self._dechunk(data) if self._chunked else data
        text = self._carry + body if self._carry else body
        cut = text.rfind(b"\n\n")
        if cut >= 0:
            self._carry = text[cut + 2:]
            arrival = _arrival_ns(self._anc)
            for event in text[:cut].split(b"\n\n"):
                self._event(event, arrival)
        else:
            self._carry = text
        if self._finished:
            self.close()

    def _event(self, event: bytes, arrival: int) -> None:
        message_id = None
        payload = b""
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                payload = line[5:]
            elif line.startswith(b"id:"):
                message_id = line[3:].strip().decode()
            elif line.startswith(b"retry:"):
                with contextlib.suppress(ValueError):
                    self.client.retry_ms = int(line[6:])
        pos = payload.find(MARK)
        if pos >= 0:
            self.client.chat(_seq(payload, pos), message_id, arrival)
        elif b'"welcome"' in payload:
            self.client.welcome(self, arrival, payload)
        elif b'"resync"' in payload:
            self.client.resyncs += 1


def _retrieve(future: asyncio.Future[None]) -> None:
    """Marks a failed welcome future as seen: ``Client`` learns of failures from ``_lost``."""
    if not future.cancelled():
        future.exception()


class StormPublisher:
    """20 messages/s round robin over the rooms; each POST retried with its Idempotency-Key."""

    def __init__(self, port: int, rooms: list[str], bearer: str | None, rate: float, tag: str) -> None:
        self.port = port
        self.rooms = rooms
        self.rate = rate
        self.tag = tag
        auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
        self.headers = auth + "Content-Type: application/json\r\n"
        self.seq = 0
        self.sent_ns: list[int] = [0]  # seq -> CLOCK_REALTIME ns of its first try (in its text)
        self.accepted_ns: dict[int, int] = {}  # seq -> when its 202 came
        self.given_up: list[int] = []
        self.outcomes: Counter[str] = Counter()  # every attempt's status, or "error"
        self.history: dict[int, list[tuple[int, str]]] = {}  # seq -> (ns, status or "error") per attempt
        self.retried = 0  # messages that needed more than one attempt
        self.stopping = False
        self._idle: list[HttpConnection] = []
        self._gate = asyncio.Semaphore(64)
        self._tasks: set[asyncio.Task[None]] = set()

    def room_of(self, seq: int) -> str:
        return self.rooms[(seq - 1) % len(self.rooms)]

    def resolved(self, upto: int) -> bool:
        """Every message up to ``upto`` is accepted or given up."""
        return len(self._tasks) == 0 or all(
            s in self.accepted_ns or s in self.given_up for s in range(1, upto + 1))

    async def run(self, max_s: float) -> None:
        """Posts at ``rate`` until ``stopping`` (or ``max_s``); each message in its own task."""
        start = time.monotonic()
        for n in range(round(max_s * self.rate)):
            delay = start + n / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopping:
                return
            self.seq += 1
            self.sent_ns.append(time.time_ns())
            task = asyncio.ensure_future(self._post(self.seq))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def settle(self, timeout_s: float) -> None:
        """Waits for the messages still being retried (bounded), then closes the connections."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._tasks:
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _post(self, seq: int) -> None:
        body = b'{"text":"m#%d:%d"}' % (seq, self.sent_ns[seq])
        path = f"/api/rooms/{self.room_of(seq)}/messages"
        headers = f"{self.headers}Idempotency-Key: {self.tag}-{seq}\r\n"
        deadline = time.monotonic() + POST_DEADLINE_S
        for attempt in range(POST_ATTEMPTS):
            if attempt:
                if attempt == 1:
                    self.retried += 1
                await asyncio.sleep(min(1.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
                if time.monotonic() > deadline:
                    break
            async with self._gate:
                conn = self._idle.pop() if self._idle else HttpConnection(self.port, headers)
                conn.headers = headers
                try:
                    async with asyncio.timeout(5.0):
                        status, answer = await conn.request("POST", path, body)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                    conn.close()
                    self.outcomes["error"] += 1
                    self.history.setdefault(seq, []).append((time.time_ns(), type(exc).__name__))
                    continue
                if conn._writer is not None:  # still open: keep-alive
                    self._idle.append(conn)
            self.outcomes[str(status)] += 1
            # The error's own words (JSON "error"/"detail"), so a surprising answer can be traced.
            why = str(status) if status in (202, 409) else f"{status} {answer[:160].decode(errors='replace')}"
            self.history.setdefault(seq, []).append((time.time_ns(), why))
            if status == 202:
                self.accepted_ns[seq] = time.time_ns()
                return
            if status not in RETRYABLE:
                break
        self.given_up.append(seq)


def _kinds(n: int, rooms: int) -> list[tuple[str, int]]:
    """(kind, room index) of each client: every room half SSE, half WebSocket."""
    return [("ws" if (i // rooms) % 2 else "sse", i % rooms) for i in range(n)]


async def _exited(proc: Any, timeout_s: float) -> bool:
    """Waits (bounded) for the process to exit; False if it had to be killed."""
    deadline = time.monotonic() + timeout_s
    for _ in range(round(timeout_s / 0.01)):
        if proc.poll() is not None:
            return True
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
        return False
    return True


def _listens(port: int) -> bool:
    """A socket in LISTEN (state 0A) on 127.0.0.1:port, from /proc/net/tcp."""
    try:
        return f"0100007F:{port:04X} 00000000:0000 0A".encode() in Path("/proc/net/tcp").read_bytes()
    except OSError:
        return False


async def _listening(server: Server, timeout_s: float) -> int:
    """When the new process listens (CLOCK_REALTIME ns), polled every 10 ms.

    Hypercorn binds and listens before it imports the app, and a connect then succeeds
    (the kernel queues it), so this is read from /proc/net/tcp, not from a connect that
    the storm's full backlog may hold up.
    """
    for _ in range(round(timeout_s / 0.01)):
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.spec.name} exited at start:\n{server.log_tail()}")
        if _listens(server.port):
            return time.time_ns()
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{server.spec.name} not listening in {timeout_s} s:\n{server.log_tail()}")


async def _serving(port: int, timeout_s: float) -> int | None:
    """When ``/healthz`` first answers 200 (CLOCK_REALTIME ns), or None: it waits behind the
    storm in the listen backlog (a dropped SYN is resent after 1 s, 3 s...), so an upper bound."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
            async with asyncio.timeout(10.0):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    line = await reader.readline()
                finally:
                    writer.close()
                if b" 200 " in line:
                    return time.time_ns()
        await asyncio.sleep(0.05)
    return None


async def _connect_all(clients: list[Client], timeout_s: float, concurrency: int = 100) -> float:
    """Opens every client, ``concurrency`` in flight (below the listen backlog); seconds to all welcomed."""
    start = time.monotonic()
    deadline = start + timeout_s
    opened = 0
    waiting: list[Client] = []  # opened, not welcomed yet
    while (opened < len(clients) or waiting) and time.monotonic() < deadline:
        waiting = [c for c in waiting if not c.welcomes]
        while opened < len(clients) and len(waiting) < concurrency:
            clients[opened].open()
            waiting.append(clients[opened])
            opened += 1
        await asyncio.sleep(0.01)
    if opened < len(clients) or waiting:
        raise RuntimeError(f"{len(clients) - opened + len(waiting)} of {len(clients)} subscribers "
                           f"not connected in {timeout_s} s")
    return time.monotonic() - start


# CLOCK_REALTIME ns; server CPU s, its run-queue wait s; generator CPU s, its run-queue wait s
Sample = tuple[int, float, float, float, float]


async def _sample(server: Server, samples: list[Sample], every_s: float = 0.1) -> None:
    """A ``Sample`` every ``every_s``, until cancelled."""
    while True:
        samples.append((time.time_ns(), server.cpu_s(), server.run_wait_s(), time.process_time(),
                        own_run_wait_s()))
        await asyncio.sleep(every_s)


def _cpu_between(samples: list[Sample], start_ns: int, end_ns: int) -> list[float | None]:
    """[server CPU, server waited for a core, generator CPU, generator waited] in % of a
    core between two instants, from the nearest samples."""
    if len(samples) < 2:
        return [None, None, None, None]
    times = [s[0] for s in samples]
    a = samples[max(0, min(len(samples) - 1, bisect.bisect_left(times, start_ns)))]
    b = samples[max(0, min(len(samples) - 1, bisect.bisect_left(times, end_ns)))]
    if b[0] <= a[0]:
        a, b = samples[0], samples[-1]
    wall = (b[0] - a[0]) / 1e9
    return [round(100 * (b[k] - a[k]) / wall, 1) for k in (1, 2, 3, 4)]


async def _wait_until(done: Any, timeout_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        await asyncio.sleep(every_s)
    return bool(done())


async def _until_all_have(clients: list[Client], wanted: dict[str, list[int]], timeout_s: float) -> bool:
    """Waits (bounded) until every client has each of its room's ``wanted`` seqs."""
    lacking = clients
    deadline = time.monotonic() + timeout_s
    while True:
        lacking = [c for c in lacking if any(s not in c.got for s in wanted[c.room])]
        if not lacking or time.monotonic() > deadline:
            return not lacking
        await asyncio.sleep(0.2)


def _lat(values: list[float]) -> dict[str, Any]:
    values.sort()
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(report.percentile(values, 0.5), 2),
            "p99_ms": round(report.percentile(values, 0.99), 2), "max_ms": round(values[-1], 2)}


async def storm_life(spec: ServerSpec, plan: StormPlan, log_dir: Path, core: int | None,
                     redis: RedisServer | None) -> dict[str, Any]:
    """One server replaced under ``plan.subscribers`` reconnecting clients; the raw marks and figures."""
    hub = spec.name == "hubbub"
    if redis is not None:
        spec = replace(spec, env={**spec.env, "REDIS_URL": redis.url,
                                  "REDIS_PREFIX": f"storm-{os.getpid()}-{secrets.token_hex(4)}:"})
    steady_s = plan.steady_s if hub else plan.baseline_steady_s
    after_s = plan.after_s if hub else plan.baseline_after_s
    after_dir = log_dir / f"after-{secrets.token_hex(3)}"  # the new process: same port, own log
    after_dir.mkdir()
    rooms = [f"storm{r}" for r in range(plan.rooms)]
    old = Server(spec, core, log_dir)
    new: Server | None = None
    clients: list[Client] = []
    publisher: StormPublisher | None = None
    pub_task: asyncio.Task[None] | None = None
    sampler: asyncio.Task[None] | None = None
    serving: asyncio.Task[int | None] | None = None
    samples: list[Sample] = []
    try:
        await old.ready()
        port = old.port
        for i, (kind, room) in enumerate(_kinds(plan.subscribers, plan.rooms)):
            path = f"/{kind}/chat?room={rooms[room]}"
            if spec.authenticated:
                path += f"&token={token(f'storm-{i}')}"  # each its own user, made before the clock
            clients.append(Client(i, kind, rooms[room], port, path, resume=hub))
        connect_s = await _connect_all(clients, plan.back_timeout_s * 2)
        await old.wait_idle(quiet_s=0.3, timeout_s=5.0)  # joins and presence frames sent

        publisher = StormPublisher(port, rooms, token("storm-publisher") if spec.authenticated else None,
                                   plan.rate, f"storm-{secrets.token_hex(4)}")
        budget_s = plan.warm_s + steady_s + 120 + after_s  # a bound: stopped long before
        pub_task = asyncio.ensure_future(publisher.run(budget_s))
        await asyncio.sleep(plan.warm_s)
        steady_ns = time.time_ns()
        meter = Meter(old)
        await asyncio.sleep(steady_s)
        steady_meter = meter.read()

        # The deploy: SIGTERM; once the process is gone, a new one on the same port.
        term_ns = time.time_ns()
        old.proc.send_signal(signal.SIGTERM)
        clean_exit = await _exited(old.proc, plan.exit_timeout_s if hub else plan.baseline_exit_timeout_s)
        exit_ns = time.time_ns()
        new = Server(spec, core, after_dir, port=port)
        sampler = asyncio.ensure_future(_sample(new, samples))
        listen_ns = await _listening(new, 30.0)
        serving = asyncio.ensure_future(_serving(port, plan.back_timeout_s))
        # every message first sent before the new process listened
        cut = bisect.bisect_left(publisher.sent_ns, listen_ns) - 1

        back = await _wait_until(lambda: all(any(w > exit_ns for w in c.welcomes) for c in clients),
                                 plan.back_timeout_s)
        caught = False
        if hub:  # the baseline cannot catch up: it has no history
            await _wait_until(lambda: publisher.resolved(cut), POST_DEADLINE_S + 5)
            wanted = {r: [] for r in rooms}
            for s in range(1, cut + 1):
                if s in publisher.accepted_ns:
                    wanted[publisher.room_of(s)].append(s)
            caught = await _until_all_have(clients, wanted, plan.back_timeout_s)
        await asyncio.sleep(max(0.0, (listen_ns + after_s * 1e9 - time.time_ns()) / 1e9))
        publisher.stopping = True
        await pub_task
        await publisher.settle(POST_DEADLINE_S)
        end_ns = time.time_ns()
        async with asyncio.timeout(plan.back_timeout_s + 15):
            serving_ns = await serving
        every: dict[str, list[int]] = {r: [] for r in rooms}
        for s in sorted(publisher.accepted_ns):
            every[publisher.room_of(s)].append(s)
        await _until_all_have(clients, every, plan.settle_s)
        await asyncio.sleep(0.3)  # a duplicate right behind the last message would arrive now
        for client in clients:
            client.stop()
        marks = {"steady_ns": steady_ns, "term_ns": term_ns, "exit_ns": exit_ns, "listen_ns": listen_ns,
                 "serving_ns": serving_ns, "end_ns": end_ns}
        out = _figures(clients, publisher, marks, cut, samples, after_s, hub)
        out.update({
            "server": spec.name, "code": old.version, "subscribers": plan.subscribers,
            "rooms": plan.rooms, "connect_s": round(connect_s, 2), "steady_s": steady_s,
            "after_s": after_s, "steady_server_cpu_pct": steady_meter["server_cpu_pct"],
            "steady": steady_meter,
            "old_exit_s": round((exit_ns - term_ns) / 1e9, 2), "old_exited_cleanly": clean_exit,
            "listening_after_exit_s": round((listen_ns - exit_ns) / 1e9, 2),
            "serving_after_listening_s": round((serving_ns - listen_ns) / 1e9, 2) if serving_ns else None,
            "all_back_in_time": back, "all_caught_up_in_time": caught if hub else None,
            # the servers' own words (LOG_LEVEL=WARNING), for a 503 or a 409 in slow_posts
            "old_log_tail": old.log_tail(15), "new_log_tail": new.log_tail(15),
        })
        return out
    finally:
        for client in clients:
            client.stop()
        if pub_task is not None and not pub_task.done():
            pub_task.cancel()
        if publisher is not None:
            publisher.stopping = True
            await publisher.settle(0.5)
        for task in (sampler, serving):
            if task is not None:
                task.cancel()
        old.stop()
        if new is not None:
            new.stop()


def _figures(clients: list[Client], publisher: StormPublisher, marks: dict[str, int], cut: int,
             samples: list[Sample], after_s: float, hub: bool) -> dict[str, Any]:
    """Losses, duplicates, times back and caught up, latencies by window, CPU over the storm."""
    sent, accepted = publisher.sent_ns, publisher.accepted_ns
    term, exit_, listen = marks["term_ns"], marks["exit_ns"], marks["listen_ns"]
    after_end = listen + after_s * 1e9

    def phase(seq: int) -> str:
        t = sent[seq]
        return phase_at(t)

    def phase_at(t: int) -> str:
        return ("steady" if t < term else "drain" if t < exit_ else "gap" if t < listen
                else "after")

    by_room: dict[str, list[int]] = {}
    for s in sorted(accepted):
        by_room.setdefault(publisher.room_of(s), []).append(s)
    lost = dups = 0
    lost_by: Counter[str] = Counter()
    dup_by: Counter[str] = Counter()
    lost_examples: list[dict[str, Any]] = []
    dup_examples: list[dict[str, Any]] = []
    caught_ns = 0
    back_ns = 0
    never_back = 0
    steady: list[float] = []
    after_live: list[tuple[int, float]] = []  # (sent ns, ms)
    after_all: list[float] = []
    backlog: list[float] = []
    unaccepted_delivered = 0
    ends: Counter[str] = Counter()
    returns: list[int] = []  # each client's first welcome on the new process
    recovered: Counter[str] = Counter()
    resyncs = 0
    for c in clients:
        ends.update(f"{why}, {phase_at(t)}" for t, why in c.ends)
        resyncs += c.resyncs
        returned = [w for w in c.welcomes if w > exit_]
        if returned:
            back_ns = max(back_ns, returned[0])
            returns.append(returned[0])
            recovered.update(r.decode() for r in c.recovered[len(c.welcomes) - len(returned):])
        else:
            never_back += 1
        for s in by_room.get(c.room, ()):
            arrival = c.got.get(s)
            if arrival is None:
                lost += 1
                lost_by[f"{c.kind} {phase(s)}"] += 1
                if len(lost_examples) < 20:
                    lost_examples.append({"client": c.index, "kind": c.kind, "seq": s, "phase": phase(s),
                                          "sent_after_term_s": round((sent[s] - term) / 1e9, 3),
                                          "welcomes_after_exit": len(returned)})
            elif s <= cut:
                caught_ns = max(caught_ns, arrival)
        unaccepted_delivered += sum(1 for s in c.got if s not in accepted)
        for s, arrival in c.dups:
            dups += 1
            dup_by[f"{c.kind} {phase(s)}"] += 1
            if len(dup_examples) < 20:
                dup_examples.append({"client": c.index, "kind": c.kind, "seq": s, "phase": phase(s),
                                     "first_after_listen_s": round((c.got[s] - listen) / 1e9, 3),
                                     "again_after_listen_s": round((arrival - listen) / 1e9, 3)})
        welcomes = c.welcomes
        for s, arrival in c.got.items():
            t = sent[s]
            ms = (arrival - t) / 1e6
            opened = welcomes[bisect.bisect_right(welcomes, arrival) - 1] if welcomes else 0
            if t < opened:  # sent before the connection that brought it was welcomed
                if opened > exit_:
                    backlog.append(ms)
            if marks["steady_ns"] <= t < term - STEADY_MARGIN_NS:
                steady.append(ms)
            elif listen <= t < after_end:
                after_all.append(ms)
                if t >= opened:
                    after_live.append((t, ms))
    lost_total = lost
    storm_end = max(back_ns, caught_ns if hub and lost == 0 else back_ns)
    server_cpu, server_waited, gen_cpu, gen_waited = _cpu_between(samples, listen, storm_end) \
        if back_ns else [None, None, None, None]
    back = sorted((w - listen) / 1e9 for w in returns)
    live_by_second: dict[int, list[float]] = {}
    for t, ms in after_live:
        live_by_second.setdefault(int((t - listen) // 1_000_000_000), []).append(ms)
    expected = sum(len(by_room.get(c.room, ())) for c in clients)
    return {
        "messages_sent": publisher.seq, "messages_accepted": len(accepted),
        "messages_given_up": len(publisher.given_up), "posts_retried": publisher.retried,
        "post_accept_max_s": round(max((accepted[q] - sent[q] for q in accepted), default=0) / 1e9, 2),
        "post_outcomes": dict(publisher.outcomes), "cut_seq": cut,
        "sent_in": dict(Counter(phase(s) for s in range(1, publisher.seq + 1))),
        "deliveries_expected": expected,
        "back_s": round((back_ns - listen) / 1e9, 2) if back_ns and not never_back else None,
        "never_back": never_back,
        "caught_up_s": round((caught_ns - listen) / 1e9, 2) if hub and lost == 0 else None,
        "lost": lost_total, "lost_per_subscriber": round(lost_total / len(clients), 2),
        "lost_pct": round(100 * lost_total / expected, 2) if expected else None,
        "duplicated": dups, "lost_by": dict(lost_by), "duplicated_by": dict(dup_by),
        "lost_examples": lost_examples, "duplicated_examples": dup_examples,
        "unaccepted_delivered": unaccepted_delivered, "resyncs": resyncs,
        # POSTs given up, told 409 (key still claimed), or accepted over 10 s after their first try
        "slow_posts": [
            {"seq": q, "phase": phase(q), "sent_after_term_s": round((sent[q] - term) / 1e9, 3),
             "accepted_after_sent_s": round((accepted[q] - sent[q]) / 1e9, 2) if q in accepted else None,
             "delivered_to": sum(1 for c in clients if q in c.got),
             "attempts": [[round((t - term) / 1e9, 2), what] for t, what in publisher.history[q]][:12]}
            for q in sorted(publisher.history)
            if q in publisher.given_up or any(w == "409" for _, w in publisher.history[q])
            or accepted.get(q, 0) - sent[q] > 10e9][:20],
        "recovered": dict(recovered), "connection_ends": dict(ends),
        "storm_window_s": round((storm_end - listen) / 1e9, 2) if back_ns else None,
        "storm_server_cpu_pct": server_cpu, "storm_server_waited_pct": server_waited,
        "storm_generator_cpu_pct": gen_cpu, "storm_generator_waited_pct": gen_waited,
        "back_p50_s": round(report.percentile(back, 0.5), 2) if back else None,
        "back_p90_s": round(report.percentile(back, 0.9), 2) if back else None,
        "attempts_max": max(c.attempts for c in clients),
        "latency_steady": _lat(steady), "latency_after_live": _lat([ms for _, ms in after_live]),
        # live, split: sent while clients were still coming back, and once all were back
        "latency_after_live_storm": _lat([ms for t, ms in after_live if t < storm_end]),
        "latency_after_live_settled": _lat([ms for t, ms in after_live if t >= storm_end]),
        # [second after listening, deliveries, p99 ms]: when the live latency came back down
        "latency_after_live_by_second": [
            [sec, len(v), _lat(v)["p99_ms"]] for sec, v in sorted(live_by_second.items())],
        "latency_after_all": _lat(after_all), "latency_backlog": _lat(backlog),
    }


# -- the runs, the summary, the table ---------------------------------------------------

SUMMARY = (  # (key, path into a life's figures)
    ("connect_s", ("connect_s",)),
    ("old_exit_s", ("old_exit_s",)),
    ("listening_after_exit_s", ("listening_after_exit_s",)),
    ("serving_after_listening_s", ("serving_after_listening_s",)),
    ("back_s", ("back_s",)),
    ("back_p50_s", ("back_p50_s",)),
    ("caught_up_s", ("caught_up_s",)),
    ("lost", ("lost",)),
    ("lost_per_subscriber", ("lost_per_subscriber",)),
    ("lost_pct", ("lost_pct",)),
    ("duplicated", ("duplicated",)),
    ("messages_given_up", ("messages_given_up",)),
    ("post_accept_max_s", ("post_accept_max_s",)),
    ("storm_window_s", ("storm_window_s",)),
    ("storm_server_cpu_pct", ("storm_server_cpu_pct",)),
    ("storm_server_waited_pct", ("storm_server_waited_pct",)),
    ("storm_generator_cpu_pct", ("storm_generator_cpu_pct",)),
    ("steady_server_cpu_pct", ("steady_server_cpu_pct",)),
    ("p99_steady_ms", ("latency_steady", "p99_ms")),
    ("p99_after_live_ms", ("latency_after_live", "p99_ms")),
    ("p99_after_live_storm_ms", ("latency_after_live_storm", "p99_ms")),
    ("p99_after_live_settled_ms", ("latency_after_live_settled", "p99_ms")),
    ("p99_after_all_ms", ("latency_after_all", "p99_ms")),
    ("p99_backlog_ms", ("latency_backlog", "p99_ms")),
    ("p50_backlog_ms", ("latency_backlog", "p50_ms")),
)


def _dig(life: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = life
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("baseline", "hubbub"):
        lives = [r[name] for r in runs if name in r]
        cell = {key: report.spread([_dig(life, path) for life in lives]) for key, path in SUMMARY}
        steady, after = cell["p99_steady_ms"], cell["p99_after_live_ms"]
        cell["p99_ratio"] = round(after["median"] / steady["median"], 2) \
            if steady and after and steady["median"] else None
        out[name] = cell
    return out


async def _run(plan: StormPlan, log_dir: Path, core: int | None) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    redis = RedisServer(generator_core(), log_dir)
    try:
        await redis.ready()
        for run in range(plan.runs):
            record: dict[str, Any] = {}
            # The baseline has no resume: what it loses is the point, and one run shows it.
            for spec in (BASELINE, HUBBUB) if run == 0 else (HUBBUB,):
                print(f"storm run {run + 1}/{plan.runs} {spec.name}: {plan.subscribers:,} subscribers "
                      f"in {plan.rooms} rooms", flush=True)
                began = time.monotonic()
                life = await storm_life(spec, plan, log_dir, core, redis if spec is HUBBUB else None)
                life["life_s"] = round(time.monotonic() - began, 1)
                record[spec.name] = life
                _progress(life)
            runs.append(record)
    finally:
        redis.stop()
    return {"plan": asdict(plan), "summary": summarize(runs), "runs": runs}


def _progress(life: dict[str, Any]) -> None:
    lat = {k: life[f"latency_{k}"].get("p99_ms") for k in ("steady", "after_live", "after_all", "backlog")}
    print(f"    [{life['life_s']} s] connect {life['connect_s']} s | old exited {life['old_exit_s']} s "
          f"after SIGTERM, new listening {life['listening_after_exit_s']} s later | back "
          f"{life['back_s']} s, caught up {life['caught_up_s']} s | lost {life['lost']:,} "
          f"({life['lost_pct']}%), duplicated {life['duplicated']:,} | storm CPU "
          f"{life['storm_server_cpu_pct']}% over {life['storm_window_s']} s | p99 ms steady "
          f"{lat['steady']}, after (live) {lat['after_live']}, after (all) {lat['after_all']}, "
          f"backlog {lat['backlog']} | POSTs retried {life['posts_retried']}, given up "
          f"{life['messages_given_up']}", flush=True)


ROWS = (  # (summary key, label, unit)
    ("connect_s", "connect all subscribers", "s"),
    ("old_exit_s", "SIGTERM → old process exited", "s"),
    ("listening_after_exit_s", "exited → new process listening", "s"),
    ("serving_after_listening_s", "listening → first /healthz answer", "s"),
    ("back_s", "listening → all back (welcome)", "s"),
    ("back_p50_s", "  half back", "s"),
    ("caught_up_s", "listening → all caught up", "s"),
    ("lost", "messages lost (summed over subscribers)", ""),
    ("lost_pct", "  share of expected deliveries", "%"),
    ("duplicated", "messages duplicated (summed)", ""),
    ("messages_given_up", "POSTs never accepted (75 s of retries)", ""),
    ("post_accept_max_s", "slowest POST: first try → accepted", "s"),
    ("storm_server_cpu_pct", "server CPU, listening → all back and caught up", "% core"),
    ("storm_window_s", "  over", "s"),
    ("storm_server_waited_pct", "  server waited for its core (others' load)", "%"),
    ("steady_server_cpu_pct", "server CPU, steady state", "% core"),
    ("p99_steady_ms", "p99 at arrival, steady state", "ms"),
    ("p99_after_live_ms", "p99 at arrival, after restart, live", "ms"),
    ("p99_after_live_storm_ms", "  of which sent while clients were coming back", "ms"),
    ("p99_after_live_settled_ms", "  of which sent once all were back", "ms"),
    ("p99_after_all_ms", "p99 at arrival, after restart, all", "ms"),
    ("p99_backlog_ms", "p99 at arrival, replayed backlog", "ms"),
)


def table(data: dict[str, Any]) -> str:
    storm = data["storm"]
    summary, plan = storm["summary"], storm["plan"]
    cell = report.spread_cell
    lines = [f"reconnect storm: {plan['subscribers']:,} subscribers (half SSE, half WebSocket) in "
             f"{plan['rooms']} rooms, {plan['rate']:g} messages/s, {len(storm['runs'])} run(s); "
             "medians [min–max]", "",
             "| metric | unit | baseline | hubbub |", "|---|---|---|---|"]
    for key, label, unit in ROWS:
        lines.append(f"| {label} | {unit} | {cell(summary['baseline'].get(key))} "
                     f"| {cell(summary['hubbub'].get(key))} |")
    ratio = summary["hubbub"].get("p99_ratio")
    if ratio is not None:
        verdict = "ok" if ratio <= 5 else "MISS"
        lines.append(f"| p99 after (live) / steady | × | | {ratio:.2f}× (target ≤ 5×: {verdict}) |")
    lines.append("")
    lines.append("live: messages sent after the subscriber's connection was welcomed; all: every "
                 "delivery of the messages sent in the window after the restart, the replay to "
                 "late returners included; backlog: what a resumed connection replayed (sent "
                 "before its welcome), for hubbub's new process.")
    killed = [name for run in storm["runs"] for name, life in run.items()
              if not life.get("old_exited_cleanly")]
    if killed:
        lines.append("note: the old process was killed (SIGKILL past its exit timeout) in: "
                     + ", ".join(killed))
    for run in storm["runs"]:
        hub = run.get("hubbub", {})
        if hub.get("lost") or hub.get("duplicated") or hub.get("resyncs"):
            lines.append(f"warning: hubbub lost {hub.get('lost')} / duplicated {hub.get('duplicated')} / "
                         f"resync {hub.get('resyncs')}: by transport and phase {hub.get('lost_by')} "
                         f"{hub.get('duplicated_by')}")
    return "\n".join(lines)


def main(quick: bool, runs: int | None, core: int | None, meta: dict[str, Any], path: Path) -> int:
    """``--only storm``: runs, writes ``path`` and prints the table."""
    plan = QUICK_STORM if quick else StormPlan()
    if runs:
        plan = replace(plan, runs=runs)
    print(f"bench (storm{', quick' if quick else ''}): {plan.subscribers:,} subscribers, "
          f"{plan.runs} run(s); other work kept the machine {meta.get('busy_before_pct')}% busy "
          "before starting", flush=True)
    import tempfile

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubbub-storm-") as tmp:
        try:
            result = asyncio.run(_run(plan, Path(tmp), core))
        except Exception:
            traceback.print_exc()
            for log in sorted(Path(tmp).rglob("*.log"))[-3:]:
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            return 1
    meta = {**meta, "plan": asdict(plan), "wall_s": round(time.monotonic() - started, 1),
            "load_avg_after": os.getloadavg()}
    data = {"meta": meta, "storm": result}
    report.write_json(path, data)
    print()
    print(table(data))
    print(f"\nwall time {meta['wall_s']} s; wrote {path}")
    return 0

