"""The one hub every transport publishes to and subscribes from.

It stamps messages, lets the backend assign ids and carry them between
processes, and fans each one out to the local subscriptions of its channel
by appending to their outboxes. It never awaits a socket.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from operator import attrgetter
from typing import Any

from hubbub.hub.backends.base import Backend, BackendUnavailable, Bucket
from hubbub.hub.crowds import Crowds
from hubbub.hub.message import Cursor, Frames, Message, encode_body, message_age_s, presence_frame
from hubbub.hub.outbox import Subscription

log = logging.getLogger(__name__)

BROADCAST = "broadcast"

# Join and leave frames wait at most this long and then go out together. A crowd joining
# one room (a restart, an event starting) makes one join per user for every member: each
# on its own meant one socket write per member per join, 5 s of CPU for 1,000 users
# joining one room; gathered, a member's socket takes a window's joins in one write.
LIVE_WINDOW_S = 0.05
REPLAY_PAGE_MAX = 500  # messages read from history per page of a replay
RECOUNT_S = 10.0  # the metrics' sums over subscriptions are at most this stale when nothing changed
_SENT = attrgetter("sent")
_BACKLOG = attrgetter("backlog")


ROOM_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_USER_ID = 128


def room_channel(room: str) -> str:
    return f"room:{room}"


def check_channel(channel: str) -> str:
    """``room:NAME``, ``user:ID`` or ``broadcast``; anything else is a ValueError, at once:
    a message to ``"lobby"`` would otherwise be published to nobody, in silence."""
    kind, _, name = channel.partition(":")
    if channel == BROADCAST or (kind == "room" and ROOM_NAME.fullmatch(name)) or (
            kind == "user" and 0 < len(name) <= MAX_USER_ID):
        return channel
    raise ValueError(f"channel must be 'room:NAME' (1-64 of A-Z a-z 0-9 _ . -), 'user:ID' (1-{MAX_USER_ID} "
                     f"characters) or 'broadcast', got {channel!r}")


def user_channel(user: str) -> str:
    return f"user:{user}"


class Subscribing:
    """What ``Hub.subscribe`` returns: an async context manager around one subscription."""

    __slots__ = ("_hub", "_channels", "_cursor", "_connection_id", "_subscription")

    def __init__(self, hub: Hub, channels: tuple[str, ...], cursor: str | None, connection_id: str) -> None:
        self._hub = hub
        self._channels = channels
        self._cursor = cursor
        self._connection_id = connection_id
        self._subscription: Subscription | None = None

    async def __aenter__(self) -> Subscription:
        self._subscription = await self._hub.open_subscription(self._channels, cursor=self._cursor,
                                                               connection_id=self._connection_id)
        return self._subscription

    async def __aexit__(self, *exc_info: object) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await self._hub.close_subscription(subscription)


def notification_channels(user: str) -> tuple[str, str]:
    return (user_channel(user), BROADCAST)


class Hub:
    def __init__(self, backend: Backend, *, outbox_size: int = 1000, presence_join_limit: int = 100,
                 presence_interval_s: float = 5.0, quiet_rooms: tuple[str, ...] = ()) -> None:
        self.backend = backend
        self.crowds = Crowds(backend.publish_live, join_limit=presence_join_limit,
                             interval_s=presence_interval_s, quiet=quiet_rooms)
        self._outbox_size = outbox_size
        # A replay goes a page at a time, each once the previous one was taken by the socket:
        # a backlog larger than the outbox is paced by the reader, never poured in at once.
        self._page_size = max(1, min(REPLAY_PAGE_MAX, outbox_size // 2))
        self._subscriptions: set[Subscription] = set()  # all of them, channels or not
        self._subscribers: dict[str, set[Subscription]] = {}
        self._replays: dict[Subscription, asyncio.Task[None]] = {}  # history still being replayed
        # One lock per channel: the first local subscriber subscribes at the backend
        # while later ones wait, and an unsubscribe never races a resubscribe.
        # Each entry counts its users so it is dropped when nobody holds or awaits it.
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._retired_sent = 0  # what ended subscriptions were handed, for delivered()
        # Bumped wherever a subscription's ``sent`` or backlog may change, so that the metrics'
        # sums (``_count``) do not walk 15,000 idle subscriptions every second for nothing.
        self._changes = 0
        self._counted: tuple[int, float, int, int] = (-1, 0.0, 0, 0)  # changes, when, sent, queued
        # Told each message's age when its fan-out here ends (the publish-to-socket histogram).
        self.observe_latency: Callable[[float], None] | None = None
        self._live: list[Message] = []  # join/leave frames waiting for LIVE_WINDOW_S
        self._live_due: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        await self.backend.start(self._deliver)

    def close_subscriptions(self) -> None:
        """Ends every local subscription: their writers close the connections.

        Join/leave frames still waiting go out first (ending subscriptions take no more)."""
        self._deliver_live()
        for subscription in tuple(self._subscriptions):
            subscription.close()

    async def close(self) -> None:
        self.close_subscriptions()
        self.crowds.close()
        await self.backend.close()

    # -- publishing ---------------------------------------------------------

    async def publish(
        self, channel: str, message: dict[str, Any], *, sender: str | None = None,
        origin: str | None = None, within: Bucket | None = None,
    ) -> Message:
        """Stamps ``message`` and sends it to every subscriber of ``channel`` on every process.

        ``within``: only if a token can be taken from this bucket, in the same step (Throttled
        if not, nothing published). Raises ValueError for a malformed channel (see
        ``check_channel``) or a message that is not a JSON object."""
        if not isinstance(message, dict):
            raise ValueError(f"a message is a dict (a JSON object), got {type(message).__name__}")
        body = encode_body(check_channel(channel), message, sender)
        if within is not None:
            return await self.backend.publish_within(within, channel, body, origin)
        return await self.backend.publish(channel, body, origin)

    async def notify(self, user: str, data: Any) -> Message:
        """A notification to every connection of ``user``."""
        return await self.publish(user_channel(user), {"type": "notification", "data": data})

    async def broadcast(self, data: Any) -> Message:
        """A notification to every notifications subscriber."""
        return await self.publish(BROADCAST, {"type": "notification", "data": data})

    # -- subscribing --------------------------------------------------------

    def subscribe(self, channels: Iterable[str], *, cursor: str | None = None,
                  connection_id: str = "") -> Subscribing:
        """``async with hub.subscribe(channels) as subscription``: a subscription that replays
        what came after ``cursor``, then goes live.

        Live messages arriving during the replay are held and de-duplicated by id,
        so nothing is lost or repeated at the seam. Always cleaned up on exit.
        """
        return Subscribing(self, tuple(channels), cursor, connection_id)

    async def open_subscription(self, channels: Iterable[str], *, cursor: str | None = None,
                                connection_id: str = "") -> Subscription:
        """``subscribe`` without the context manager, for a caller that keeps nothing it need
        not (a live connection keeps its task's frames for hours, and an ``async with`` holds
        two more objects): pair it with ``close_subscription`` in a ``finally``."""
        subscription = Subscription((), connection_id, self._outbox_size)
        parsed = Cursor.parse(cursor)
        if parsed is not None:
            subscription.hold()
        self._subscriptions.add(subscription)
        wanted = tuple(channels)
        try:
            for channel in dict.fromkeys(wanted):
                await self.add_channel(subscription, channel)
            if subscription.channels == wanted:  # the caller's tuple, not an equal one beside it
                subscription.channels = wanted
            if parsed is not None:  # the first page now, so the welcome can say `recovered`
                after = await self._replay_page(subscription, parsed)
                if after is not None:
                    replaying = self._replays[subscription] = asyncio.create_task(
                        self._replay_rest(subscription, after))
                    replaying.add_done_callback(lambda _: self._replays.pop(subscription, None))
        except BaseException:
            await self.close_subscription(subscription)
            raise
        return subscription

    async def close_subscription(self, subscription: Subscription) -> None:
        """Ends what ``open_subscription`` opened (its replay too); once is enough."""
        if subscription not in self._subscriptions:
            return
        subscription.close()
        self._subscriptions.discard(subscription)
        self._retired_sent += subscription.sent
        self._changes += 1
        replaying = self._replays.pop(subscription, None)
        if replaying is not None:
            replaying.cancel()
        for channel in subscription.channels:
            await self._remove(channel, subscription)

    async def add_channel(self, subscription: Subscription, channel: str) -> bool:
        """Adds ``channel`` to a subscription: its messages published from now on, with ids
        still increasing across the set (the clock is shared), so one cursor resumes all.
        False when it was already there."""
        if channel in subscription.channels:
            return False
        await self._add(channel, subscription)  # on failure nothing is registered
        subscription.channels += (channel,)
        return True

    async def remove_channel(self, subscription: Subscription, channel: str) -> bool:
        """Takes ``channel`` out of a subscription; False when it was not there."""
        if channel not in subscription.channels:
            return False
        subscription.channels = tuple(c for c in subscription.channels if c != channel)
        await self._remove(channel, subscription)
        return True

    async def _replay_page(self, subscription: Subscription, after: Cursor) -> Cursor | None:
        """Queues one page of history after ``after``; where the next starts, or None once live.

        Live messages are held meanwhile. If they outgrow the outbox they are let go (they
        are in history too), and the page that was being read is no longer the last one.
        """
        drops = subscription.held_drops
        page = await self.backend.history(subscription.channels, after, self._page_size)
        if subscription.recovered is None:
            subscription.recovered = page.recovered
        if not page.recovered:  # gone from history (or trimmed while we paged): resync
            subscription.resync()
            subscription.go_live()
            return None
        subscription.replay_page(page.messages)
        self._changes += 1
        if len(page.messages) < self._page_size and subscription.held_drops == drops:
            subscription.go_live()
            return None
        last = page.messages[-1] if page.messages else None
        return after if last is None or last.seq is None else Cursor(last.epoch, last.seq)

    async def _replay_rest(self, subscription: Subscription, after: Cursor | None) -> None:
        """The pages after the first, each once the socket took the one before."""
        try:
            while after is not None:
                await subscription.drained()
                if subscription.ended:
                    return
                after = await self._replay_page(subscription, after)
        except BackendUnavailable:
            log.info("replay for %s cut short: backend unavailable", subscription.connection_id)
            subscription.resync()
            subscription.go_live()
        except Exception:
            log.exception("replay for %s failed", subscription.connection_id)
            subscription.close()

    async def _add(self, channel: str, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is not None:  # fast path: the backend already carries it here
            subscribers.add(subscription)
            return
        async with self._channel_lock(channel):
            subscribers = self._subscribers.get(channel)
            if subscribers is None:
                await self.backend.subscribe(channel)  # on failure nothing is registered
                subscribers = self._subscribers[channel] = set()
            subscribers.add(subscription)

    async def _remove(self, channel: str, subscription: Subscription) -> None:
        async with self._channel_lock(channel):
            subscribers = self._subscribers.get(channel)
            if subscribers is None:
                return
            subscribers.discard(subscription)
            if subscribers:
                return
            del self._subscribers[channel]
            try:
                await self.backend.unsubscribe(channel)
            except Exception:
                log.warning("could not unsubscribe %s at the backend", channel, exc_info=True)

    @asynccontextmanager
    async def _channel_lock(self, channel: str) -> AsyncIterator[None]:
        entry = self._locks.get(channel)
        if entry is None:
            entry = self._locks[channel] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[channel]

    def _deliver(self, message: Message) -> None:
        if message.seq is None:  # join/leave (live only, no id): gathered, see LIVE_WINDOW_S
            self._live.append(message)
            if self._live_due is None:
                self._live_due = asyncio.get_running_loop().call_later(LIVE_WINDOW_S, self._deliver_live)
            return
        if self._live:  # what came before this message is delivered before it
            self._deliver_live()
        self._fan_out(message)

    def _deliver_live(self) -> None:
        if self._live_due is not None:
            self._live_due.cancel()
            self._live_due = None
        live, self._live = self._live, []
        self._changes += 1
        by_channel: dict[str, list[Message]] = {}
        for message in live:
            by_channel.setdefault(message.channel, []).append(message)
        for channel, frames in by_channel.items():
            subscribers = self._subscribers.get(channel)
            if not subscribers:
                continue
            # One hand-off per member for the whole window, not one per frame: n users
            # joining make n²/2 frames, and this keeps the per-frame work to encoding once.
            together = frames[0] if len(frames) == 1 else Frames(frames)
            for subscription in tuple(subscribers):
                subscription.offer_live(frames, together)

    def _fan_out(self, message: Message) -> None:
        subscribers = self._subscribers.get(message.channel)
        if not subscribers:
            return
        self._changes += 1
        for subscription in tuple(subscribers):
            subscription.offer(message)
        if self.observe_latency is not None and (age := message_age_s(message.json)) is not None:
            self.observe_latency(age)

    # -- presence -----------------------------------------------------------

    async def join(self, channel: str, user: str, connection_id: str) -> None:
        """Records the connection; the user's first one announces ``join`` to the room, or in
        a crowded room the next ``presence`` frame does (see crowds.py)."""
        members = await self.backend.presence_add(channel, user, connection_id)
        if members is None:
            return
        if self.crowds.announces(channel, members):
            await self.backend.publish_live(channel, presence_frame("join", channel, user))
        else:
            self.crowds.joined(channel, user, members)

    async def leave(self, channel: str, user: str, connection_id: str) -> None:
        """Forgets the connection; the user's last one announces ``leave`` (or the next
        ``presence`` frame does)."""
        members = await self.backend.presence_remove(channel, user, connection_id)
        if members is None:
            return
        if self.crowds.announces(channel, members + 1):  # as many as there were
            await self.backend.publish_live(channel, presence_frame("leave", channel, user))
        else:
            self.crowds.left(channel, user, members)

    async def presence(self, channel: str) -> list[dict[str, Any]]:
        counts = await self.backend.presence(channel)
        return [{"id": user, "connections": n} for user, n in sorted(counts.items())]

    def subscriber_counts(self) -> list[tuple[str, int]]:
        """(channel, local subscribers) for every channel subscribed in this process."""
        return [(channel, len(subscribers)) for channel, subscribers in self._subscribers.items()]

    def delivered(self) -> int:
        """Messages handed to subscriptions so far (the sender's own connection, which gets an
        ack instead, not counted). Counted per subscription on the hot path, summed here."""
        return self._retired_sent + self._count()[0]

    def queued(self) -> int:
        """Messages waiting in outboxes for sockets that are backed up."""
        return self._count()[1]

    def _count(self) -> tuple[int, int]:
        """(sent, queued) over the open subscriptions: summed again only after a change, while
        outboxes hold something, or after RECOUNT_S (a connection's own frames, acks and pongs,
        queue without a change here)."""
        changes, when, sent, queued = self._counted
        now = time.monotonic()
        if changes != self._changes or queued or now - when > RECOUNT_S:
            subscriptions = self._subscriptions
            sent = sum(map(_SENT, subscriptions))
            queued = sum(map(_BACKLOG, subscriptions))
            self._counted = (self._changes, now, sent, queued)
        return sent, queued

    def local_subscriptions(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
