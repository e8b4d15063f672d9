"""The Redis backend: many processes act as one hub (ids, history, presence, limits, tickets).

Owns one command client and one supervised pub/sub connection per process. History follows
the rule in Backend.history, as ``memory`` does: each publish renews the stream's PEXPIRE.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import secrets
from collections.abc import Iterator, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio import ConnectionError as RedisConnectionError
from redis.asyncio import RedisError
from redis.asyncio import TimeoutError as RedisTimeoutError
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from hubbub.hub.backends.base import BackendUnavailable, Bucket, Deliver, Throttled
from hubbub.hub.backends.redis_link import PubSubLink, RedisLink
from hubbub.hub.backends.redis_pipeline import MAX_BATCH, AutoPipeline
from hubbub.hub.backends.redis_scripts import (
    CONNECTIONS_LUA,
    EMITTED_KEY,
    HISTORY_LUA,
    IDEMPOTENCY_CLAIM_LUA,
    IDEMPOTENCY_RELEASE_LUA,
    PRESENCE_LUA,
    PUBLISH_LUA,
    PUBLISH_WITHIN_LUA,
    TAKE_TOKEN_LUA,
    publish_call,
)
from hubbub.hub.message import Cursor, History, Message, format_id, presence_frame, with_id

log = logging.getLogger(__name__)

_ReadKey = tuple[tuple[str, ...], Cursor | None, int]  # a history read: channels, after, limit

RECONNECT_MIN_S, RECONNECT_MAX_S = 0.1, 5.0
SUBSCRIBE_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 2.0
IDLE_PING_S = 10.0  # an idle pub/sub connection is pinged; no reply in as long again drops it
RENEW_BATCH = 500  # connections renewed per script call (a few ms of Redis time)
RESYNC_FRAME = '{"type":"resync"}'
READ_AHEAD = 1000  # pub/sub replies handed over per turn at most (see _read)
# Redis connections per process for the commands off the hot paths (the catch-up after an
# outage, health checks, metrics, renewals of connection counts; the hot paths share one
# RedisLink). More at once wait (up to POOL_WAIT_S) for one to come free: redis-py's default
# pool fails them with "Too many connections" past 100 in flight.
MAX_CONNECTIONS = 64
POOL_WAIT_S = 5.0


def _parse(channel: str, json_text: str, origin: str | None = None) -> Message:
    """Rebuilds a Message without decoding: its JSON always starts with ``{"id":"E-S",``."""
    epoch, _, seq = json_text[7 : json_text.index('"', 7)].rpartition("-")
    return Message(channel, json_text, int(seq), epoch, origin)


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Maps any Redis failure to BackendUnavailable (503 / close 1013)."""
    try:
        yield
    except RedisError as exc:
        raise BackendUnavailable(f"redis: {exc}") from exc


class RedisBackend:
    """Backend on one Redis shared by every process; every key and topic is under ``prefix``.

    Keys: clock {epoch, seq}; h:CH stream; m:CH {epoch, last, dropped}; p:CH, pu:CH presence;
    cn:USER live connections; tb:KEY token bucket; t:TICKET; once:ID a call's first result;
    idem:KEY an Idempotency-Key's fingerprint and response.
    Pub/sub topic: c:CH.
    """

    name = "redis"

    def __init__(self, url: str, prefix: str = "hubbub:", history_size: int = 1000,
                 history_ttl_s: float = 3600.0, *, presence_ttl_s: float = 30.0) -> None:
        if history_size < 1:
            raise ValueError(f"history_size must be at least 1, got {history_size}")
        # Heroku Redis has self-signed certificates; the kwarg is a TypeError on redis://.
        tls: dict[str, Any] = {"ssl_cert_reqs": "none"} if url.startswith("rediss://") else {}
        common: dict[str, Any] = dict(decode_responses=True, socket_connect_timeout=2.0, **tls)
        # from_url has no retries: commands ride out a blip, then fail within a few seconds.
        self._client = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S, socket_timeout=5.0,
            retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError], **common))
        self._url = url
        # Its name in CLIENT LIST (printable, no spaces).
        self._listener_name = "".join(c if "!" <= c <= "~" else "_" for c in f"{prefix}listener")
        # The hot paths' commands, pipelined per turn on a connection of their own.
        self._batch = AutoPipeline(RedisLink(url, connect_timeout_s=2.0, reply_timeout_s=5.0))
        self._prefix = prefix
        self._topic_prefix_len = len(self._topic(""))  # a pub/sub topic is this long before its channel
        self._size = history_size
        self._ttl_s = history_ttl_s
        self._presence_ttl_s = presence_ttl_s
        self._presence_ttl_ms = int(presence_ttl_s * 1000)
        self._clock = f"{prefix}clock"
        self._publish = self._client.register_script(PUBLISH_LUA)
        self._publish_within = self._client.register_script(PUBLISH_WITHIN_LUA)
        self._history = self._client.register_script(HISTORY_LUA)
        self._presence = self._client.register_script(PRESENCE_LUA)
        self._take_token = self._client.register_script(TAKE_TOKEN_LUA)
        self._connections = self._client.register_script(CONNECTIONS_LUA)
        self._idempotency_claim = self._client.register_script(IDEMPOTENCY_CLAIM_LUA)
        self._idempotency_release = self._client.register_script(IDEMPOTENCY_RELEASE_LUA)
        self._deliver: Deliver | None = None
        # Subscribed channel -> newest seq delivered (or known to precede the subscription).
        self._last: dict[str, int] = {}
        self._epoch: str | None = None  # the epoch the seqs in _last belong to
        self._pending: dict[str, asyncio.Event] = {}  # channels whose subscribe() runs
        self._confirmations: dict[str, asyncio.Future[bool]] = {}
        self._pubsub: PubSubLink | None = None
        self._online = asyncio.Event()
        self._generation = 0  # bumped on every lost pub/sub connection
        # What this process renews, so that what a crashed process held expires.
        self._local_presence: set[tuple[str, str, str]] = set()
        self._local_connections: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._reads: dict[_ReadKey, asyncio.Future[History]] = {}  # history reads not yet started
        self._closed = False

    def _topic(self, channel: str) -> str:
        return f"{self._prefix}c:{channel}"

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._tasks = [asyncio.create_task(self._listen_with_retries(), name="redis-listener"),
                       asyncio.create_task(self._renew(), name="redis-renewal")]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._deliver = None
        for task in self._tasks:
            while not task.done():  # asyncio.wait_for in Python 3.11 can swallow a cancel
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
        await self._batch.close()
        await self._client.aclose()

    async def subscribe(self, channel: str) -> None:
        if (pending := self._pending.get(channel)) is not None:
            await pending.wait()  # joins the subscribe() already under way
            if channel not in self._last:
                raise BackendUnavailable(f"could not subscribe to {channel!r}")
            return
        if channel in self._last:
            return
        self._pending[channel] = done = asyncio.Event()
        self._last[channel] = 0  # live messages are delivered from now on
        topic = self._topic(channel)
        ok = False
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await self._online.wait()
                generation, pubsub = self._generation, self._pubsub
                confirmed = self._confirmations[topic] = asyncio.get_running_loop().create_future()
                if pubsub is not None:
                    pubsub.subscribe(topic)
                if pubsub is None or not await confirmed:
                    raise RedisConnectionError("pub/sub connection lost during subscribe")
                # Read after the confirmation: later publishes have larger seqs and arrive live.
                reply = await self._batch.call("HMGET", self._clock, "epoch", "seq")
                epoch, seq = cast(list[str | None], reply)
            if generation != self._generation:
                raise RedisConnectionError("pub/sub reconnected during subscribe")
            if epoch != self._epoch:
                self._adopt_epoch(epoch)
            if channel in self._last:  # unless unsubscribed meanwhile
                self._last[channel] = max(self._last[channel], int(seq or 0))
            ok = True
        except (RedisError, TimeoutError) as exc:
            raise BackendUnavailable(f"could not subscribe to {channel!r}: {exc}") from exc
        finally:
            self._confirmations.pop(topic, None)
            del self._pending[channel]
            if not ok:
                self._last.pop(channel, None)
            done.set()

    async def unsubscribe(self, channel: str) -> None:
        if self._last.pop(channel, None) is None or (pubsub := self._pubsub) is None:
            return
        try:
            pubsub.unsubscribe(self._topic(channel))
        except RedisError:
            log.debug("unsubscribe of %r not sent; the reconnect leaves it out", channel)

    async def publish(self, channel: str, body_json: str, origin: str | None = None) -> Message:
        return await self._run_publish(None, channel, body_json, origin)

    async def publish_within(self, bucket: Bucket, channel: str, body_json: str,
                             origin: str | None = None) -> Message:
        return await self._run_publish(bucket, channel, body_json, origin)

    async def _run_publish(self, bucket: Bucket | None, channel: str, body_json: str,
                           origin: str | None) -> Message:
        """PUBLISH_LUA, or PUBLISH_WITHIN_LUA after a token from ``bucket``."""
        keys, args = publish_call(self._prefix, channel, body_json, history_size=self._size,
                                  history_ttl_s=self._ttl_s, origin=origin, bucket=bucket)
        script = self._publish if bucket is None else self._publish_within
        with _unavailable():
            epoch, seq = await self._batch.script(script, keys, args)
        if not epoch:
            raise Throttled(float(seq))
        return Message(channel, with_id(format_id(epoch, seq), body_json), seq, epoch, origin)

    async def publish_live(self, channel: str, body_json: str) -> None:
        with _unavailable():
            await self._batch.call("PUBLISH", self._topic(channel), "l" + body_json)

    async def history(self, channels: Sequence[str], after: Cursor | None, limit: int) -> History:
        """Identical reads asked for before the first of them starts (within one event-loop
        turn) are made once: a reconnect storm resumes a room's members from the same id, all
        at once. They share the result, its Messages and so their encoded frames. The read
        starts after every asker asked, so it sees all that preceded their live subscriptions."""
        key = (tuple(channels), after, limit)
        read = self._reads.get(key)
        if read is None:
            read = self._reads[key] = asyncio.ensure_future(self._read_history(key))
            read.add_done_callback(_retrieve)
        return await asyncio.shield(read)  # an asker cancelled leaves the read to the others

    async def _read_history(self, key: _ReadKey) -> History:
        del self._reads[key]  # under way: a later asker makes its own read
        channels, after, limit = key
        keys = [self._clock]
        for channel in channels:
            keys += [self._key("m", channel), self._key("h", channel)]
        with _unavailable():
            epoch, *replies = await self._batch.script(
                self._history, keys, ["" if after is None else after.seq, limit])
            recovered = after is None or after.epoch == epoch
            # A script returns stream entries raw: [id, [field, value, …]].
            ranges: list[list[Any]] = [[(entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))
                                        for entry_id, fields in entries] for entries in replies[1::2]]
            for (meta_epoch, last, dropped), entries in zip(replies[::2], ranges, strict=True):
                if after is None or not recovered or meta_epoch != epoch:
                    continue
                # Lost: trimmed past the cursor, or the whole stream expired since the cursor.
                if after.seq < int(dropped or 0) or (not entries and after.seq < int(last or 0)):
                    recovered = False
            if after is not None and not recovered:
                # Stale cursor: the caller resyncs; hand back what is retained from the start.
                async with self._client.pipeline(transaction=False) as pipe:
                    for channel in channels:
                        pipe.xrange(self._key("h", channel), "-", "+", count=limit)
                    ranges = await pipe.execute()
        merged = list(heapq.merge(*self._messages(channels, ranges, epoch), key=_seq))
        if after is None:
            return History(merged[-limit:], recovered=True)
        return History(merged[:limit], recovered=recovered)

    def _messages(self, channels: Sequence[str], ranges: list[list[Any]],
                  epoch: str | None) -> list[list[Message]]:
        """Stream entries as Messages, oldest first, without leftovers of another epoch."""
        return [sorted((m for m in (_parse(c, f["m"], f.get("o")) for _, f in entries)
                        if m.epoch == epoch), key=_seq)
                for c, entries in zip(channels, ranges, strict=True)]

    async def presence_add(self, channel: str, user: str, connection: str) -> int | None:
        entry = (channel, user, connection)
        self._local_presence.add(entry)  # from now on renewed by _renew
        try:
            members = int(await self._presence_call(channel, "add", user, connection, once=True))
        except BackendUnavailable:
            self._local_presence.discard(entry)
            raise
        return None if members < 0 else members

    async def presence_remove(self, channel: str, user: str, connection: str) -> int | None:
        self._local_presence.discard((channel, user, connection))
        members = int(await self._presence_call(channel, "remove", user, connection, once=True))
        return None if members < 0 else members

    async def presence(self, channel: str) -> dict[str, int]:
        flat = await self._presence_call(channel, "list", "")
        return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def _presence_args(self, channel: str, op: str, user: str, connection: str,
                       once: bool) -> tuple[list[str], list[str | int]]:
        keys = [self._key("p", channel), self._key("pu", channel)]
        if once:
            keys.append(self._once_key())
        return keys, [op, user, connection, self._presence_ttl_ms]

    async def _presence_call(self, channel: str, op: str, user: str, connection: str = "",
                             once: bool = False) -> Any:
        keys, args = self._presence_args(channel, op, user, connection, once)
        with _unavailable():
            result, gone = await self._batch.script(self._presence, keys, args)
        await self._announce_expired(channel, gone)
        return result

    async def _announce_expired(self, channel: str, users: list[str]) -> None:
        """Users whose last connection expired (their process died): they left."""
        for user in users:
            await self.publish_live(channel, presence_frame("leave", channel, user))

    async def take_token(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> float:
        keys = [self._key("tb", key), self._once_key()]
        with _unavailable():
            return float(await self._batch.script(self._take_token, keys, [repr(rate_per_s), burst, cost]))

    async def idempotency_claim(self, key: str, fingerprint: str, nonce: str,
                                pending_ttl_s: float) -> tuple[str, str | None]:
        with _unavailable():
            state, response = await self._batch.script(
                self._idempotency_claim, [self._key("idem", key)],
                [fingerprint, nonce, max(1, int(pending_ttl_s * 1000))])
        return state, (response if state == "done" else None)

    async def idempotency_complete(self, key: str, fingerprint: str, response: str, ttl_s: float) -> None:
        with _unavailable():
            await self._batch.call("SET", self._key("idem", key), f"d:{fingerprint}:{response}",
                                   "PX", max(1, int(ttl_s * 1000)))

    async def idempotency_release(self, key: str, nonce: str) -> None:
        with _unavailable():
            await self._batch.script(self._idempotency_release, [self._key("idem", key)], [nonce])

    async def connection_add(self, user: str, connection: str, limit: int) -> bool:
        entry = (user, connection)
        self._local_connections.add(entry)  # from now on renewed by _renew
        try:
            with _unavailable():
                added = await self._batch.script(
                    self._connections, [self._key("cn", user), self._once_key()],
                    ["add", self._presence_ttl_ms, limit, connection])
        except BackendUnavailable:
            self._local_connections.discard(entry)
            raise
        if not added:
            self._local_connections.discard(entry)
        return bool(added)

    async def connection_remove(self, user: str, connection: str) -> None:
        self._local_connections.discard((user, connection))
        with _unavailable():
            await self._batch.script(self._connections, [self._key("cn", user)],
                                     ["remove", self._presence_ttl_ms, connection])

    def _once_key(self) -> str:
        """Fixed per call: redis-py's retry re-sends the same arguments, so the script sees it."""
        return self._key("once", secrets.token_hex(8))

    async def store_ticket(self, ticket: str, payload: str, ttl_s: float) -> None:
        with _unavailable():
            await self._batch.call("SET", self._key("t", ticket), payload, "PX", max(1, int(ttl_s * 1000)))

    async def redeem_ticket(self, ticket: str) -> str | None:
        with _unavailable():
            return cast(str | None, await self._batch.call("GETDEL", self._key("t", ticket)))

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                return bool(await self._client.ping())
        except (RedisError, TimeoutError):
            return False

    async def emitted(self) -> dict[str, int]:
        """Messages hubbub.client's emitters published, by channel kind (all time)."""
        with _unavailable():
            counts = cast(dict[str, str], await self._client.hgetall(f"{self._prefix}{EMITTED_KEY}"))
        return {kind: int(n) for kind, n in counts.items()}

    # -- the listener: one pub/sub connection, supervised ------------------------------

    async def _listen_with_retries(self) -> None:
        """Owns the pub/sub connection: connects, resubscribes, catches up, reads; on loss, again."""
        failures = 0
        while True:
            # Not retried inside: a reconnect the listener did not see would skip the catch-up.
            pubsub = PubSubLink(self._url, connect_timeout_s=2.0, name=self._listener_name)
            try:
                await self._resubscribe(pubsub)
                failures = 0
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("redis pub/sub connection lost (%s: %s); reconnecting",
                            type(exc).__name__, exc)
            except Exception:
                log.exception("redis listener failed; reconnecting")
            finally:
                self._online.clear()
                self._pubsub = None
                self._generation += 1
                for confirmed in self._confirmations.values():
                    if not confirmed.done():
                        confirmed.set_result(False)
                pubsub.close()
            delay = min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2**failures)
            failures += 1
            await asyncio.sleep(random.uniform(delay / 2, delay))  # jitter: processes spread out

    async def _resubscribe(self, pubsub: PubSubLink) -> None:
        """Subscribes the channels again, then delivers what they missed before any live one."""
        channels = [c for c in self._last if c not in self._pending]
        await pubsub.connect()  # even with no channel yet
        held: list[list[Any]] = []
        if channels:
            waiting = {self._topic(c) for c in channels}
            pubsub.subscribe(*waiting)
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                while waiting:
                    for reply in await pubsub.read(None, READ_AHEAD):
                        if reply[0] == "subscribe":
                            waiting.discard(reply[1])
                        elif reply[0] == "message":
                            held.append(reply)  # handled after the catch-up, deduplicated by seq
            await self._catch_up(channels)
        for _, topic, data in held:
            self._on_message(topic, data)
        gone = [self._topic(c) for c in channels if c not in self._last]
        if gone:  # unsubscribed while we were reconnecting
            pubsub.unsubscribe(*gone)
        self._pubsub = pubsub
        self._online.set()

    async def _catch_up(self, channels: list[str]) -> None:
        """Delivers, in seq order, what the streams got after the last seq delivered per channel."""
        epoch = cast(str | None, await self._client.hget(self._clock, "epoch"))
        if epoch != self._epoch:
            self._adopt_epoch(epoch)  # e.g. Redis restarted empty: all of the new epoch is missed
        async with self._client.pipeline(transaction=False) as pipe:
            for c in channels:
                last = self._last.get(c, 0)
                pipe.hget(self._key("m", c), "dropped")
                pipe.xrange(self._key("h", c), f"({last}-0" if last else "-", "+")
            replies = await pipe.execute()
        ranges: list[list[Any]] = replies[1::2]
        for c, dropped in zip(channels, replies[::2], strict=True):
            if int(dropped or 0) > self._last.get(c, 0):
                # More was published during the outage than history keeps: the gap cannot
                # be filled, so its subscribers are told to resync (refetch history).
                self._hand_over(Message(c, RESYNC_FRAME))
        for message in heapq.merge(*self._messages(channels, ranges, epoch), key=_seq):
            self._accept(message)

    async def _read(self, pubsub: PubSubLink) -> None:
        silent = 0
        while True:
            replies = await pubsub.read(IDLE_PING_S, READ_AHEAD)
            if not replies:
                silent += 1
                if silent > 1:
                    raise RedisConnectionError("pub/sub connection silent, PING unanswered")
                pubsub.ping()
                continue
            silent = 0
            # Everything already read, then one turn of the loop before handing it over. The
            # publishes' own replies come at about the same time: their callers answer first
            # (the POSTs' 202s go out before the fan-out, not after it and its writes), so the
            # publishers' next POSTs share one pipeline and more messages share each socket
            # write. One room of 1,000: Redis went from ~0.7x to ~1.0-1.3x the memory hub's
            # deliveries per CPU-second (docs/performance.md).
            await asyncio.sleep(0)
            for reply in replies:
                self._on_reply(reply)

    def _on_reply(self, reply: list[Any]) -> None:
        kind = reply[0]
        if kind == "message":
            self._on_message(reply[1], reply[2])
        elif kind == "subscribe":
            confirmed = self._confirmations.get(reply[1])
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(True)

    def _on_message(self, topic: str, data: str) -> None:
        channel = topic[self._topic_prefix_len:]
        if data[0] == "l":
            if channel in self._last:
                self._hand_over(Message(channel, data[1:]))
        else:
            json_text, newline, origin = data[1:].partition("\n")
            self._accept(_parse(channel, json_text, origin if newline else None))

    def _accept(self, message: Message) -> None:
        """Hands a message over once: only for subscribed channels, only past the last seq."""
        if message.epoch != self._epoch:
            self._adopt_epoch(message.epoch)
        last = self._last.get(message.channel)
        if last is None or message.seq is None or message.seq <= last:
            return
        self._last[message.channel] = message.seq
        self._hand_over(message)

    def _adopt_epoch(self, epoch: str | None) -> None:
        """History restarted (FLUSHALL, restart without persistence): old seqs mean nothing."""
        self._epoch = epoch
        for channel in self._last:
            self._last[channel] = 0

    def _hand_over(self, message: Message) -> None:
        if self._deliver is not None:
            try:
                self._deliver(message)
            except Exception:
                log.exception("deliver failed for %r", message)

    async def _renew(self) -> None:
        """Renews this process's presence and connection entries every third of their TTL,
        so a crashed process's expire within the TTL."""
        while True:
            await asyncio.sleep(self._presence_ttl_s / 3)
            for renew in (self._renew_presence, self._renew_connections):
                try:
                    await renew()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("%s failed (%s); retrying", renew.__name__, exc)

    async def _renew_presence(self) -> None:
        """One script call per channel and ``RENEW_BATCH`` connections, pipelined ``MAX_BATCH``
        calls at a time: renewing each connection on its own cost ~0.1 ms of this process's
        CPU apiece, and each channel's call on its own ~0.25 ms (a quarter of a second every
        10 s for 1,000 rooms, in one burst that delayed their messages)."""
        by_channel: dict[str, list[str]] = {}
        for channel, user, connection in tuple(self._local_presence):
            by_channel.setdefault(channel, []).extend((user, connection))
        calls = [(channel, pairs[i:i + 2 * RENEW_BATCH]) for channel, pairs in by_channel.items()
                 for i in range(0, len(pairs), 2 * RENEW_BATCH)]
        for i in range(0, len(calls), MAX_BATCH):
            failures = [outcome for outcome in await asyncio.gather(
                *(self._renew_channel(channel, pairs) for channel, pairs in calls[i:i + MAX_BATCH]),
                return_exceptions=True) if isinstance(outcome, Exception)]
            if failures:
                raise failures[0]

    async def _renew_channel(self, channel: str, pairs: list[str]) -> None:
        keys = [self._key("p", channel), self._key("pu", channel)]
        _, gone = await self._batch.script(self._presence, keys, ["add", *pairs, self._presence_ttl_ms])
        await self._announce_expired(channel, gone)

    async def _renew_connections(self) -> None:
        """One script call per ``RENEW_BATCH`` connections, whichever users they belong to."""
        entries = sorted(self._local_connections)  # a user's connections go in one call
        for i in range(0, len(entries), RENEW_BATCH):
            keys: dict[str, int] = {}
            args: list[str | int] = ["renew", self._presence_ttl_ms]
            for user, connection in entries[i:i + RENEW_BATCH]:
                args += [keys.setdefault(self._key("cn", user), len(keys) + 1), connection]
            await self._connections(keys=list(keys), args=args)


def _retrieve(read: asyncio.Future[History]) -> None:
    """Marks a shared read's failure as seen: its askers may all have gone."""
    if not read.cancelled():
        read.exception()


def _seq(message: Message) -> int:
    return message.seq or 0
