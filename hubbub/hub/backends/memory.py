"""The in-memory backend: one process, zero set-up; the executable spec of Backend.

History follows the one rule in Backend.history: kept while the channel is active, all of
it dropped once nothing was published for ``history_ttl_s``. Whatever goes quiet (histories,
rate-limit buckets, tickets) is freed by a periodic sweep that pops only what expired.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import TypeVar

from hubbub.hub.backends.base import Bucket, Deliver, Throttled
from hubbub.hub.message import Cursor, History, Message, format_id, with_id

log = logging.getLogger(__name__)

SWEEP_MIN_S, SWEEP_MAX_S = 0.5, 30.0  # the sweep runs every HISTORY_TTL / 2, within these
SWEEP_BATCH = 1000  # entries freed between two yields to the event loop
# Idempotency keys kept at most (each ~0.3 KB): past it the oldest go first, so a retry
# later than that many newer keys is published again. Redis keeps them for IDEMPOTENCY_TTL.
MAX_IDEMPOTENCY_KEYS = 100_000

V = TypeVar("V")
# A user's connections, in presence and in the per-user count: most users hold one, so a lone
# connection id is kept as itself and a set (216 bytes) is made only for a second one.
Ids = str | set[str]


class _ChannelHistory:
    """Bounded history of one channel; remembers the newest seq it no longer holds."""

    __slots__ = ("entries", "dropped_upto", "touched")

    def __init__(self, size: int, dropped_upto: int, now: float) -> None:
        self.entries: deque[Message] = deque(maxlen=size)
        self.dropped_upto = dropped_upto
        self.touched = now  # the last publish

    def append(self, message: Message, now: float) -> None:
        if len(self.entries) == self.entries.maxlen:
            self.dropped_upto = self.entries[0].seq or 0
        self.entries.append(message)
        self.touched = now

    @property
    def last(self) -> int:
        return self.entries[-1].seq or 0  # never empty: made by a publish, dropped whole


def _pop_expired(entries: OrderedDict[str, V], expired: Callable[[V], bool],
                 budget: int) -> list[tuple[str, V]]:
    """Pops up to ``budget`` entries from the front (the least recently used) while expired."""
    popped: list[tuple[str, V]] = []
    while len(popped) < budget and entries and expired(entries[next(iter(entries))]):
        popped.append(entries.popitem(last=False))
    return popped


class MemoryBackend:
    name = "memory"

    def __init__(self, history_size: int = 1000, history_ttl_s: float = 3600.0) -> None:
        # A fresh epoch per process start: cursors from before a restart are stale.
        self.epoch = secrets.token_hex(4)
        self._seq = 0
        self._history_size = history_size
        self._history_ttl_s = history_ttl_s
        self._sweep_interval_s = max(SWEEP_MIN_S, min(history_ttl_s / 2, SWEEP_MAX_S))
        # Ordered by last use (each use moves an entry to the end), so the sweep pops
        # expired ones from the front and never looks at the live ones.
        self._histories: OrderedDict[str, _ChannelHistory] = OrderedDict()
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()  # tokens, at, full at
        self._tickets: OrderedDict[str, tuple[float, str]] = OrderedDict()  # expires at, payload
        # Idempotency-Key -> (expires at, fingerprint, nonce of a claim, stored response or None)
        self._idempotency: OrderedDict[str, tuple[float, str, str, str | None]] = OrderedDict()
        # What an expired history lost, without keeping a counter per channel ever used (the
        # Redis backend keeps m:CH for HISTORY_TTL + 7 days; here that would grow with every
        # channel name): the channel's last seq for one more TTL, then folded into one
        # watermark, the newest seq of every forgotten channel. A cursor older than it, on a
        # channel with neither history nor tombstone, is not recovered: a false resync for a
        # client away more than ~2 x HISTORY_TTL. A resync is always safe; a wrong
        # "recovered" never is (the client would silently miss messages).
        self._tombstones: OrderedDict[str, tuple[float, int]] = OrderedDict()  # forget at, last
        self._watermark = 0
        self._subscribed: set[str] = set()
        self._deliver: Deliver | None = None
        self._presence: dict[str, dict[str, Ids]] = {}
        self._connections: dict[str, Ids] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_periodically(), name="memory-sweep")

    async def close(self) -> None:
        self._deliver = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait([self._sweeper])
            self._sweeper = None

    def retained(self) -> dict[str, int]:
        """Entries held, by kind: for a gauge that must fall back once traffic stops."""
        return {"channels": len(self._histories), "tombstones": len(self._tombstones),
                "buckets": len(self._buckets), "tickets": len(self._tickets),
                "idempotency_keys": len(self._idempotency),
                "presence_channels": len(self._presence), "connection_users": len(self._connections)}

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def publish(self, channel: str, body_json: str, origin: str | None = None) -> Message:
        self._seq += 1
        message = Message(channel, with_id(format_id(self.epoch, self._seq), body_json),
                          self._seq, self.epoch, origin)
        now = time.monotonic()
        history = self._active_history(channel, now)
        if history is None:
            tombstone = self._tombstones.pop(channel, None)
            lost = tombstone[1] if tombstone is not None else self._watermark
            history = self._histories[channel] = _ChannelHistory(self._history_size, lost, now)
        else:
            self._histories.move_to_end(channel)
        history.append(message, now)
        if self._deliver is not None and channel in self._subscribed:
            self._deliver(message)
        return message

    async def publish_within(self, bucket: Bucket, channel: str, body_json: str,
                             origin: str | None = None) -> Message:
        wait = await self.take_token(bucket.key, bucket.rate_per_s, bucket.burst, bucket.cost)
        if wait > 0:
            raise Throttled(wait)
        return await self.publish(channel, body_json, origin)

    async def publish_live(self, channel: str, body_json: str) -> None:
        if self._deliver is not None and channel in self._subscribed:
            self._deliver(Message(channel, body_json))

    async def history(self, channels: Sequence[str], after: Cursor | None, limit: int) -> History:
        now = time.monotonic()
        histories = [h for h in (self._active_history(c, now) for c in channels) if h is not None]
        recovered = after is None or (
            after.epoch == self.epoch and all(after.seq >= self._lost_upto(c) for c in channels)
        )
        # A stale cursor gets what is retained from the start; the caller resyncs.
        after_seq = after.seq if after is not None and recovered else 0
        per_channel = [[m for m in h.entries if (m.seq or 0) > after_seq] for h in histories]
        merged = list(heapq.merge(*per_channel, key=lambda m: m.seq or 0))
        if after is None:
            return History(merged[max(len(merged) - limit, 0):] if limit > 0 else [], recovered=True)
        return History(merged[:limit], recovered=recovered)

    def _active_history(self, channel: str, now: float) -> _ChannelHistory | None:
        """The channel's history, unless it was quiet for the TTL: then it is dropped now,
        not at the next sweep, so the rule holds to the moment."""
        history = self._histories.get(channel)
        if history is not None and now - history.touched >= self._history_ttl_s:
            del self._histories[channel]
            self._bury(channel, history, now)
            return None
        return history

    def _bury(self, channel: str, history: _ChannelHistory, now: float) -> None:
        self._tombstones[channel] = (now + self._history_ttl_s, history.last)

    def _lost_upto(self, channel: str) -> int:
        """The newest seq of ``channel`` no longer retained; a cursor at or after it lost nothing."""
        history = self._histories.get(channel)
        if history is not None:
            return history.dropped_upto
        tombstone = self._tombstones.get(channel)
        return tombstone[1] if tombstone is not None else self._watermark

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                more = True
                while more:  # a large backlog is freed in slices, the loop serving in between
                    more = self._sweep(time.monotonic(), SWEEP_BATCH)
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("memory sweep failed; next one in %.1f s", self._sweep_interval_s)

    def _sweep(self, now: float, budget: int) -> bool:
        """Frees up to ``budget`` expired entries, least recently used first; True if more are due."""
        quiet_since = now - self._history_ttl_s
        freed = 0
        for channel, history in _pop_expired(self._histories, lambda h: h.touched <= quiet_since,
                                             budget):
            self._bury(channel, history, now)
            freed += 1
        for _, (_, last) in _pop_expired(self._tombstones, lambda t: t[0] <= now, budget - freed):
            self._watermark = max(self._watermark, last)
            freed += 1
        # A full bucket is the same as none; its entry is freed once refilled.
        freed += len(_pop_expired(self._buckets, lambda b: b[2] <= now, budget - freed))
        freed += len(_pop_expired(self._tickets, lambda t: t[0] <= now, budget - freed))
        freed += len(_pop_expired(self._idempotency, lambda i: i[0] <= now, budget - freed))
        return freed >= budget

    async def presence_add(self, channel: str, user: str, connection: str) -> int | None:
        users = self._presence.setdefault(channel, {})
        return len(users) if _add_id(users, user, connection) == 1 else None

    async def presence_remove(self, channel: str, user: str, connection: str) -> int | None:
        users = self._presence.get(channel, {})
        if _remove_id(users, user, connection) != 0:
            return None
        if not users:
            self._presence.pop(channel, None)
        return len(users)

    async def presence(self, channel: str) -> dict[str, int]:
        return {user: _count(ids) for user, ids in self._presence.get(channel, {}).items()}

    async def take_token(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> float:
        now = time.monotonic()
        tokens, stamp, _ = self._buckets.pop(key, (float(burst), now, now))  # re-added at the end
        tokens = min(float(burst), tokens + (now - stamp) * rate_per_s)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / rate_per_s
        self._buckets[key] = (tokens, now, now + (burst - tokens) / rate_per_s)
        return wait

    async def connection_add(self, user: str, connection: str, limit: int) -> bool:
        ids = self._connections.get(user)
        if not _has_id(ids, connection) and _count(ids) >= limit:
            return False
        _add_id(self._connections, user, connection)
        return True

    async def connection_remove(self, user: str, connection: str) -> None:
        _remove_id(self._connections, user, connection)

    async def idempotency_claim(self, key: str, fingerprint: str, nonce: str,
                                pending_ttl_s: float) -> tuple[str, str | None]:
        now = time.monotonic()
        entry = self._idempotency.get(key)
        if entry is not None and entry[0] <= now:
            del self._idempotency[key]
            entry = None
        if entry is None:
            self._idempotency[key] = (now + pending_ttl_s, fingerprint, nonce, None)
            while len(self._idempotency) > MAX_IDEMPOTENCY_KEYS:  # the oldest first
                self._idempotency.popitem(last=False)
            return "new", None
        _, stored_fingerprint, stored_nonce, response = entry
        if stored_fingerprint != fingerprint:
            return "mismatch", None
        if response is not None:
            return "done", response
        return ("new" if stored_nonce == nonce else "pending"), None

    async def idempotency_complete(self, key: str, fingerprint: str, response: str, ttl_s: float) -> None:
        self._idempotency.pop(key, None)
        self._idempotency[key] = (time.monotonic() + ttl_s, fingerprint, "", response)

    async def idempotency_release(self, key: str, nonce: str) -> None:
        entry = self._idempotency.get(key)
        if entry is not None and entry[3] is None and entry[2] == nonce:
            del self._idempotency[key]

    async def store_ticket(self, ticket: str, payload: str, ttl_s: float) -> None:
        self._tickets.pop(ticket, None)
        self._tickets[ticket] = (time.monotonic() + ttl_s, payload)

    async def redeem_ticket(self, ticket: str) -> str | None:
        entry = self._tickets.pop(ticket, None)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    async def ping(self) -> bool:
        return True


def _count(ids: Ids | None) -> int:
    return 0 if ids is None else 1 if isinstance(ids, str) else len(ids)


def _has_id(ids: Ids | None, one: str) -> bool:
    return ids == one if isinstance(ids, str) else ids is not None and one in ids


def _add_id(by_key: dict[str, Ids], key: str, one: str) -> int:
    """Adds ``one`` to ``key``'s ids; how many it has now."""
    ids = by_key.get(key)
    if ids is None or ids == one:
        by_key[key] = one
        return 1
    if isinstance(ids, str):
        ids = by_key[key] = {ids}
    ids.add(one)
    return len(ids)


def _remove_id(by_key: dict[str, Ids], key: str, one: str) -> int | None:
    """Takes ``one`` from ``key``'s ids (the key goes with its last); how many are left, or
    None when it was not there."""
    ids = by_key.get(key)
    if not _has_id(ids, one):
        return None
    if isinstance(ids, set) and len(ids) > 1:
        ids.discard(one)
        if len(ids) == 1:
            by_key[key] = next(iter(ids))
        return len(ids)
    del by_key[key]
    return 0
