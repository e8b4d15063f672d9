"""The in-memory backend: one process, zero set-up; the executable spec of Backend."""

from __future__ import annotations

import heapq
import secrets
import time
from collections import deque
from collections.abc import Sequence

from app.hub.backends.base import Deliver
from app.hub.message import Cursor, History, Message, format_id, with_id


class _ChannelHistory:
    """Bounded, expiring history of one channel; remembers the newest seq it dropped."""

    __slots__ = ("entries", "dropped_upto")

    def __init__(self, size: int) -> None:
        self.entries: deque[tuple[float, Message]] = deque(maxlen=size)
        self.dropped_upto = 0

    def append(self, message: Message, now: float) -> None:
        if len(self.entries) == self.entries.maxlen:
            self.dropped_upto = self.entries[0][1].seq or 0
        self.entries.append((now, message))

    def expire(self, before: float) -> None:
        entries = self.entries
        while entries and entries[0][0] < before:
            self.dropped_upto = entries.popleft()[1].seq or 0


class MemoryBackend:
    name = "memory"

    def __init__(self, history_size: int = 1000, history_ttl_s: float = 3600.0) -> None:
        # A fresh epoch per process start: cursors from before a restart are stale.
        self.epoch = secrets.token_hex(4)
        self._seq = 0
        self._history_size = history_size
        self._history_ttl_s = history_ttl_s
        self._histories: dict[str, _ChannelHistory] = {}
        self._subscribed: set[str] = set()
        self._deliver: Deliver | None = None
        self._presence: dict[str, dict[str, set[str]]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._tickets: dict[str, tuple[float, str]] = {}

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def close(self) -> None:
        self._deliver = None

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def publish(self, channel: str, body_json: str, origin: str | None = None) -> Message:
        self._seq += 1
        message = Message(channel, with_id(format_id(self.epoch, self._seq), body_json),
                          self._seq, self.epoch, origin)
        now = time.monotonic()
        history = self._histories.get(channel)
        if history is None:
            history = self._histories[channel] = _ChannelHistory(self._history_size)
        history.expire(now - self._history_ttl_s)
        history.append(message, now)
        if self._deliver is not None and channel in self._subscribed:
            self._deliver(message)
        return message

    async def publish_live(self, channel: str, body_json: str) -> None:
        if self._deliver is not None and channel in self._subscribed:
            self._deliver(Message(channel, body_json))

    async def history(self, channels: Sequence[str], after: Cursor | None, limit: int) -> History:
        cutoff = time.monotonic() - self._history_ttl_s
        histories = [h for h in map(self._histories.get, channels) if h is not None]
        for history in histories:
            history.expire(cutoff)
        recovered = after is None or (
            after.epoch == self.epoch and all(after.seq >= h.dropped_upto for h in histories)
        )
        # A stale cursor gets what is retained from the start; the caller resyncs.
        after_seq = after.seq if after is not None and recovered else 0
        per_channel = [[m for _, m in h.entries if (m.seq or 0) > after_seq] for h in histories]
        merged = list(heapq.merge(*per_channel, key=lambda m: m.seq or 0))
        if after is None:
            return History(merged[max(len(merged) - limit, 0):] if limit > 0 else [], recovered=True)
        return History(merged[:limit], recovered=recovered)

    async def presence_add(self, channel: str, user: str, connection: str) -> bool:
        users = self._presence.setdefault(channel, {})
        connections = users.setdefault(user, set())
        connections.add(connection)
        return len(connections) == 1

    async def presence_remove(self, channel: str, user: str, connection: str) -> bool:
        users = self._presence.get(channel, {})
        connections = users.get(user)
        if not connections or connection not in connections:
            return False
        connections.discard(connection)
        if connections:
            return False
        del users[user]
        if not users:
            self._presence.pop(channel, None)
        return True

    async def presence(self, channel: str) -> dict[str, int]:
        return {user: len(c) for user, c in self._presence.get(channel, {}).items()}

    async def take_token(self, key: str, rate_per_s: float, burst: int) -> float:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - stamp) * rate_per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate_per_s

    async def store_ticket(self, ticket: str, payload: str, ttl_s: float) -> None:
        now = time.monotonic()
        # Drop expired tickets now and then so unused ones cannot pile up.
        if len(self._tickets) > 1000:
            self._tickets = {k: v for k, v in self._tickets.items() if v[0] > now}
        self._tickets[ticket] = (now + ttl_s, payload)

    async def redeem_ticket(self, ticket: str) -> str | None:
        entry = self._tickets.pop(ticket, None)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    async def ping(self) -> bool:
        return True
