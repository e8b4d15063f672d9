"""The hub over the real MemoryBackend: subscribe races, cleanup, the replay seam, slow consumers,
stamping, merged notification ids and presence frames.

Backends that misbehave are small MemoryBackend subclasses gated by asyncio.Events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from hubbub.hub import hub as hub_module
from hubbub.hub.backends.base import BackendUnavailable
from hubbub.hub.backends.memory import MemoryBackend
from hubbub.hub.hub import BROADCAST, Hub, notification_channels, room_channel, user_channel
from hubbub.hub.message import Cursor, History, Message, presence_frame
from hubbub.hub.outbox import SlowConsumer, Subscription

TIMEOUT_S = 2.0
LOBBY = room_channel("lobby")


class GatedSubscribeBackend(MemoryBackend):
    """subscribe() signals ``entered`` and waits for ``release``; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.subscribe_calls: list[str] = []

    async def subscribe(self, channel: str) -> None:
        self.subscribe_calls.append(channel)
        self.entered.set()
        await self.release.wait()
        await super().subscribe(channel)


class FailingSubscribeBackend(MemoryBackend):
    """subscribe() raises for the channels in ``failing``."""

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing

    async def subscribe(self, channel: str) -> None:
        if channel in self.failing:
            raise BackendUnavailable("redis is down")
        await super().subscribe(channel)


class GatedUnsubscribeBackend(MemoryBackend):
    """unsubscribe() signals ``entered`` and waits for ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def unsubscribe(self, channel: str) -> None:
        self.entered.set()
        await self.release.wait()
        await super().unsubscribe(channel)


class GatedHistoryBackend(MemoryBackend):
    """history() waits twice: before and after taking its snapshot, so live publishes can land
    on either side of it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.take_snapshot = asyncio.Event()
        self.snapshot_taken = asyncio.Event()
        self.release = asyncio.Event()

    async def history(self, channels: Sequence[str], after: Cursor | None, limit: int) -> History:
        self.entered.set()
        await self.take_snapshot.wait()
        result = await super().history(channels, after, limit)
        self.snapshot_taken.set()
        await self.release.wait()
        return result


class FailingHistoryBackend(MemoryBackend):
    async def history(self, channels: Sequence[str], after: Cursor | None, limit: int) -> History:
        raise BackendUnavailable("redis is down")


@pytest.fixture
async def make_hub() -> AsyncIterator[Callable[..., Awaitable[Hub]]]:
    hubs: list[Hub] = []

    async def make(backend: MemoryBackend | None = None, **kwargs: Any) -> Hub:
        hub = Hub(backend or MemoryBackend(), **kwargs)
        async with asyncio.timeout(TIMEOUT_S):
            await hub.start()
        hubs.append(hub)
        return hub

    yield make
    async with asyncio.timeout(TIMEOUT_S):
        for hub in hubs:
            await hub.close()


async def take(sub: Subscription, count: int) -> list[Message]:
    """The next ``count`` queued messages (fewer only if the subscription closes)."""
    messages: list[Message] = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(messages) < count:
            batch = await sub.next_batch()
            if not batch:
                break
            messages.extend(batch)
    return messages


async def take_until(sub: Subscription, last: Callable[[Message], bool]) -> list[Message]:
    """Queued messages up to and including the first for which ``last`` is true."""
    messages: list[Message] = []
    async with asyncio.timeout(TIMEOUT_S):
        while not messages or not last(messages[-1]):
            batch = await sub.next_batch()
            if not batch:
                break
            for message in batch:
                messages.append(message)
                if last(message):
                    break
    return messages


def body(message: Message) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(message.json)
    return value


def seqs(messages: list[Message]) -> list[int | None]:
    return [m.seq for m in messages]


def assert_clean(hub: Hub, backend: MemoryBackend, *channels: str) -> None:
    assert hub.local_subscriptions() == 0
    assert hub._subscribers == {}
    assert hub._locks == {}
    for channel in channels:
        assert channel not in backend._subscribed


async def started_task(body_fn: Callable[[], Awaitable[Any]]) -> asyncio.Task[Any]:
    """Starts ``body_fn`` and returns once it has run up to its first real suspension."""
    started = asyncio.Event()

    async def run() -> Any:
        started.set()
        return await body_fn()

    task = asyncio.create_task(run())
    async with asyncio.timeout(TIMEOUT_S):
        await started.wait()
    return task


# -- subscribe races and cleanup ---------------------------------------------


async def test_hub_concurrent_first_subscribers_backend_subscribed_once(make_hub) -> None:
    backend = GatedSubscribeBackend()
    hub = await make_hub(backend)
    ready = [asyncio.Event(), asyncio.Event()]
    publish_done = asyncio.Event()

    async def subscriber(index: int) -> list[Message]:
        async with hub.subscribe([LOBBY], connection_id=f"c{index}") as sub:
            ready[index].set()
            await publish_done.wait()
            return await take(sub, 2)

    first = await started_task(lambda: subscriber(0))
    async with asyncio.timeout(TIMEOUT_S):
        await backend.entered.wait()
    second = await started_task(lambda: subscriber(1))  # now parked on the channel lock
    assert hub.local_subscriptions() == 0
    backend.release.set()
    async with asyncio.timeout(TIMEOUT_S):
        await ready[0].wait()
        await ready[1].wait()
        await hub.publish(LOBBY, {"text": "one"})
        await hub.publish(LOBBY, {"text": "two"})
        publish_done.set()
        results = await asyncio.gather(first, second)
    assert backend.subscribe_calls == [LOBBY]
    for received in results:
        assert [body(m)["text"] for m in received] == ["one", "two"]
    assert_clean(hub, backend, LOBBY)


async def test_hub_backend_fails_during_subscribe_nothing_registered(make_hub) -> None:
    backend = FailingSubscribeBackend({LOBBY})
    hub = await make_hub(backend)
    with pytest.raises(BackendUnavailable):
        async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], connection_id="c1"):
            pytest.fail("entered a subscription the backend refused")
    assert_clean(hub, backend, LOBBY)

    backend.failing.clear()
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], connection_id="c1") as sub:
        assert LOBBY in backend._subscribed
        await hub.publish(LOBBY, {"text": "after recovery"})
        assert [body(m)["text"] for m in await take(sub, 1)] == ["after recovery"]
    assert_clean(hub, backend, LOBBY)


async def test_hub_second_channel_fails_first_channel_rolled_back(make_hub) -> None:
    backend = FailingSubscribeBackend({BROADCAST})
    hub = await make_hub(backend)
    channels = notification_channels("bob")
    with pytest.raises(BackendUnavailable):
        async with asyncio.timeout(TIMEOUT_S), hub.subscribe(channels, connection_id="c1"):
            pytest.fail("entered a subscription the backend refused")
    assert_clean(hub, backend, *channels)


async def test_hub_backend_fails_during_history_nothing_registered(make_hub) -> None:
    backend = FailingHistoryBackend()
    hub = await make_hub(backend)
    with pytest.raises(BackendUnavailable):
        async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], cursor=f"{backend.epoch}-0"):
            pytest.fail("entered a subscription whose history failed")
    assert_clean(hub, backend, LOBBY)


async def test_hub_exception_inside_subscription_cleans_up(make_hub) -> None:
    backend = MemoryBackend()
    hub = await make_hub(backend)
    with pytest.raises(RuntimeError, match="handler failed"):
        async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], connection_id="c1") as sub:
            assert hub.local_subscriptions() == 1
            assert LOBBY in backend._subscribed
            raise RuntimeError("handler failed")
    assert sub.closed
    assert_clean(hub, backend, LOBBY)


async def test_hub_cancelled_inside_subscription_cleans_up(make_hub) -> None:
    backend = MemoryBackend()
    hub = await make_hub(backend)
    inside = asyncio.Event()

    async def connection() -> None:
        async with hub.subscribe([LOBBY], connection_id="c1") as sub:
            inside.set()
            await sub.next_batch()  # a client disconnect arrives here as CancelledError

    task = asyncio.create_task(connection())
    async with asyncio.timeout(TIMEOUT_S):
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert_clean(hub, backend, LOBBY)


async def test_hub_last_subscriber_leaves_others_keep_channel(make_hub) -> None:
    backend = MemoryBackend()
    hub = await make_hub(backend)
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], connection_id="c1") as staying:
        async with hub.subscribe([LOBBY], connection_id="c2"):
            pass
        assert LOBBY in backend._subscribed
        await hub.publish(LOBBY, {"text": "still here"})
        assert [body(m)["text"] for m in await take(staying, 1)] == ["still here"]
    assert_clean(hub, backend, LOBBY)


async def test_hub_resubscribe_while_unsubscribe_pending_ends_subscribed(make_hub) -> None:
    backend = GatedUnsubscribeBackend()
    hub = await make_hub(backend)

    async def leaving() -> None:
        async with hub.subscribe([LOBBY], connection_id="c1"):
            pass

    ready = asyncio.Event()
    published = asyncio.Event()

    async def arriving() -> list[Message]:
        async with hub.subscribe([LOBBY], connection_id="c2") as sub:
            ready.set()
            await published.wait()
            return await take(sub, 1)

    leaver = asyncio.create_task(leaving())
    async with asyncio.timeout(TIMEOUT_S):
        await backend.entered.wait()  # the last subscriber's unsubscribe is in flight
    arriver = await started_task(arriving)
    assert not ready.is_set()  # waits on the channel lock, not on a stale fast path
    backend.release.set()
    async with asyncio.timeout(TIMEOUT_S):
        await leaver
        await ready.wait()
        assert LOBBY in backend._subscribed
        await hub.publish(LOBBY, {"text": "welcome back"})
        published.set()
        received = await arriver
    assert [body(m)["text"] for m in received] == ["welcome back"]
    assert_clean(hub, backend, LOBBY)


# -- the replay seam -----------------------------------------------------------


async def test_hub_publish_during_replay_ordered_no_duplicates_none_lost(make_hub) -> None:
    backend = GatedHistoryBackend()
    hub = await make_hub(backend)
    first = await hub.publish(LOBBY, {"n": 1})
    await hub.publish(LOBBY, {"n": 2})
    holder: list[Subscription] = []
    entered = asyncio.Event()
    done = asyncio.Event()

    async def resuming() -> None:
        async with hub.subscribe([LOBBY], cursor=first.id, connection_id="c1") as sub:
            holder.append(sub)
            entered.set()
            await done.wait()

    task = asyncio.create_task(resuming())
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await backend.entered.wait()
            await hub.publish(LOBBY, {"n": 3})  # live, and also in the history snapshot
            backend.take_snapshot.set()
            await backend.snapshot_taken.wait()
            await hub.publish(LOBBY, {"n": 4})  # live only: after the snapshot
            backend.release.set()
            await entered.wait()
            await hub.publish(LOBBY, {"n": 5})  # plain live
            received = await take(holder[0], 4)
            done.set()
            await task
    finally:
        task.cancel()
    assert [body(m)["n"] for m in received] == [2, 3, 4, 5]
    numbers = [m.seq or 0 for m in received]
    assert numbers == sorted(set(numbers))
    assert holder[0].recovered is True
    assert holder[0].last_id == received[-1].id


async def test_hub_resume_cursor_replays_only_after_cursor(make_hub) -> None:
    hub = await make_hub()
    sent = [await hub.publish(LOBBY, {"n": n}) for n in range(5)]
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], cursor=sent[1].id) as sub:
        assert [body(m)["n"] for m in await take(sub, 3)] == [2, 3, 4]
        assert sub.recovered is True


async def test_hub_resume_stale_cursor_resync_then_live(make_hub) -> None:
    hub = await make_hub()
    await hub.publish(LOBBY, {"n": 0})
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], cursor="other-epoch-3") as sub:
        await hub.publish(LOBBY, {"n": 1})
        received = await take(sub, 2)
    assert body(received[0]) == {"type": "resync"}
    assert body(received[1])["n"] == 1
    assert sub.recovered is False


async def test_hub_resume_merged_channels_beyond_history_limit_loses_nothing(make_hub) -> None:
    # Each channel keeps HISTORY_SIZE messages, but user:X and broadcast together can hold
    # twice that after a cursor. A replay cut at HISTORY_SIZE and then continued live would
    # silently skip the rest: the subscriber must get them all, or a resync frame first.
    hub = await make_hub(MemoryBackend(history_size=3))
    first = await hub.notify("bob", 0)
    for n in range(1, 6):
        await (hub.broadcast(n) if n % 2 else hub.notify("bob", n))
    channels = notification_channels("bob")
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe(channels, cursor=first.id) as sub:
        await hub.notify("bob", 6)
        received = await take_until(sub, lambda m: body(m).get("data") == 6)
    if body(received[0]) != {"type": "resync"}:
        assert [body(m)["data"] for m in received] == [1, 2, 3, 4, 5, 6]


async def test_hub_resume_backlog_larger_than_outbox_paced_all_delivered(make_hub) -> None:
    # A replay used to be poured into the outbox at once: a backlog over OUTBOX_SIZE closed
    # the connection as a slow consumer on every retry. It goes a page at a time now.
    hub = await make_hub(MemoryBackend(history_size=1000), outbox_size=10)
    sent = [await hub.publish(LOBBY, {"n": n}) for n in range(200)]
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], cursor=sent[0].id) as sub:
        assert sub.recovered is True
        received = await take(sub, 199)
    assert [body(m)["n"] for m in received] == list(range(1, 200))


async def test_hub_resume_live_flood_during_long_replay_each_once_in_order(make_hub) -> None:
    # Live messages outgrow what a subscription holds during the replay: they are let go and
    # read from history instead, so the seam still loses and repeats nothing.
    hub = await make_hub(MemoryBackend(history_size=1000), outbox_size=10)
    sent = [await hub.publish(LOBBY, {"n": n}) for n in range(100)]
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], cursor=sent[0].id) as sub:
        for n in range(100, 160):  # while the replay waits for the reader
            await hub.publish(LOBBY, {"n": n})
        received = await take(sub, 159)
        await hub.publish(LOBBY, {"n": 160})
        received += await take(sub, 1)
    assert [body(m)["n"] for m in received] == list(range(1, 161))
    assert not sub.overflowed


async def test_hub_resume_history_trimmed_while_paging_resync_then_live(make_hub) -> None:
    hub = await make_hub(MemoryBackend(history_size=30), outbox_size=10)
    sent = [await hub.publish(LOBBY, {"n": n}) for n in range(30)]
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], cursor=sent[0].id) as sub:
        first = await take(sub, 5)  # the first page, not yet all read
        for n in range(30, 100):  # history moves on past where the replay is
            await hub.publish(LOBBY, {"n": n})
        rest = await take_until(sub, lambda m: body(m) == {"type": "resync"})
        await hub.publish(LOBBY, {"n": 100})
        after = await take_until(sub, lambda m: body(m).get("n") == 100)
    assert [body(m)["n"] for m in first] == [1, 2, 3, 4, 5]
    assert body(rest[-1]) == {"type": "resync"}
    assert body(after[-1])["n"] == 100
    assert sub.recovered is True  # the welcome was right: the first page was complete


async def test_hub_resume_backend_down_mid_replay_resync_then_live(make_hub) -> None:
    backend = MemoryBackend()
    hub = await make_hub(backend, outbox_size=4)
    sent = [await hub.publish(LOBBY, {"n": n}) for n in range(10)]
    original = backend.history
    calls = 0

    async def flaky(*args: Any) -> History:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise BackendUnavailable("redis is down")
        return await original(*args)

    backend.history = flaky  # type: ignore[method-assign]
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], cursor=sent[0].id) as sub:
        received = await take_until(sub, lambda m: body(m) == {"type": "resync"})
        await hub.publish(LOBBY, {"n": 10})
        live = await take(sub, 1)
    assert [body(m).get("n") for m in received[:-1]] == [1, 2]
    assert body(live[0])["n"] == 10


# -- slow consumers ------------------------------------------------------------


async def test_hub_full_outbox_slow_consumer_never_delays_others(make_hub) -> None:
    hub = await make_hub(outbox_size=3)
    count = 20
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], connection_id="slow") as slow, \
            hub.subscribe([LOBBY], connection_id="fast") as fast:
        received: list[Message] = []
        for n in range(count):
            async with asyncio.timeout(0.5):  # publish only appends to outboxes
                await hub.publish(LOBBY, {"n": n})
            received += await fast.next_batch()
        assert [body(m)["n"] for m in received] == list(range(count))
        assert slow.overflowed
        assert not fast.overflowed
        with pytest.raises(SlowConsumer):
            await slow.next_batch()


async def test_hub_publish_burst_undrained_subscriber_publish_completes(make_hub) -> None:
    hub = await make_hub(outbox_size=2)
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], connection_id="slow") as slow:
        for n in range(100):
            await hub.publish(LOBBY, {"n": n})
        with pytest.raises(SlowConsumer):
            await slow.next_batch()
    assert hub.local_subscriptions() == 0


# -- origin ------------------------------------------------------------------


async def test_hub_publish_origin_connection_skipped_others_receive(make_hub) -> None:
    hub = await make_hub()
    async with asyncio.timeout(TIMEOUT_S), \
            hub.subscribe([LOBBY], connection_id="alice-tab1") as sender, \
            hub.subscribe([LOBBY], connection_id="alice-tab2") as same_user, \
            hub.subscribe([LOBBY], connection_id="bob-tab1") as other:
        await hub.publish(LOBBY, {"text": "mine"}, sender="alice", origin="alice-tab1")
        await hub.publish(LOBBY, {"text": "server"})
        assert [body(m)["text"] for m in await take(sender, 1)] == ["server"]
        assert [body(m)["text"] for m in await take(same_user, 2)] == ["mine", "server"]
        assert [body(m)["text"] for m in await take(other, 2)] == ["mine", "server"]


async def test_hub_resume_own_message_replayed_from_history(make_hub) -> None:
    hub = await make_hub()
    before = await hub.publish(LOBBY, {"text": "before"})
    await hub.publish(LOBBY, {"text": "mine"}, sender="alice", origin="alice-tab1")
    async with asyncio.timeout(TIMEOUT_S), \
            hub.subscribe([LOBBY], cursor=before.id, connection_id="alice-tab1") as sub:
        assert [body(m)["text"] for m in await take(sub, 1)] == ["mine"]


# -- stamping ------------------------------------------------------------------


FORGED = {"id": "x-999", "channel": "room:admin", "sender": "mallory", "timestamp": "1999-01-01T00:00:00Z"}


async def test_hub_publish_stamps_and_overwrites_client_fields(make_hub) -> None:
    hub = await make_hub()
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY]) as sub:
        message = await hub.publish(LOBBY, {**FORGED, "type": "chat", "text": "hi"}, sender="alice")
        delivered = (await take(sub, 1))[0]
    value = body(delivered)
    assert delivered.json == message.json
    assert list(value)[0] == "id"
    assert value["id"] == message.id == f"{hub.backend.epoch}-{message.seq}"
    assert value["channel"] == LOBBY
    assert value["sender"] == "alice"
    assert value["timestamp"] != FORGED["timestamp"]
    assert value["type"] == "chat" and value["text"] == "hi"


@pytest.mark.parametrize("kind", ["notify", "broadcast"])
async def test_hub_notify_broadcast_stamped_client_fields_overwritten(make_hub, kind: str) -> None:
    hub = await make_hub()
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe(notification_channels("bob")) as sub:
        if kind == "notify":
            message = await hub.notify("bob", FORGED)
        else:
            message = await hub.broadcast(FORGED)
        value = body((await take(sub, 1))[0])
    assert list(value)[0] == "id"
    assert value["id"] == message.id
    assert value["channel"] == (user_channel("bob") if kind == "notify" else BROADCAST)
    assert value["sender"] is None
    assert value["type"] == "notification"
    assert value["data"] == FORGED  # the payload travels as data, never as stamped fields
    assert value["timestamp"] != FORGED["timestamp"]


# -- merged notification ids ---------------------------------------------------


async def test_hub_notifications_ids_strictly_increase_across_user_and_broadcast(make_hub) -> None:
    hub = await make_hub()
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe(notification_channels("bob")) as sub:
        for n in range(12):
            if n % 3 == 0:
                await hub.broadcast(n)
            elif n % 3 == 1:
                await hub.notify("bob", n)
            else:
                await hub.notify("carol", n)  # someone else's: never delivered here
        received = await take(sub, 8)
    assert [body(m)["data"] for m in received] == [n for n in range(12) if n % 3 != 2]
    numbers = seqs(received)
    assert all(a is not None and b is not None and a < b for a, b in zip(numbers, numbers[1:], strict=False))
    assert {m.channel for m in received} == {user_channel("bob"), BROADCAST}


async def test_hub_notifications_one_cursor_resumes_both_channels(make_hub) -> None:
    hub = await make_hub()
    sent = []
    for n in range(6):
        sent.append(await (hub.notify("bob", n) if n % 2 else hub.broadcast(n)))
    async with asyncio.timeout(TIMEOUT_S), \
            hub.subscribe(notification_channels("bob"), cursor=sent[2].id) as sub:
        await hub.broadcast(6)
        received = await take(sub, 4)
    assert [body(m)["data"] for m in received] == [3, 4, 5, 6]


# -- presence -------------------------------------------------------------------


async def test_hub_presence_join_leave_once_per_user(make_hub) -> None:
    hub = await make_hub()
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], connection_id="observer") as sub:
        await hub.join(LOBBY, "alice", "a1")
        await hub.join(LOBBY, "alice", "a2")  # a second tab: no second join
        await hub.join(LOBBY, "bob", "b1")
        assert await hub.presence(LOBBY) == [{"id": "alice", "connections": 2},
                                             {"id": "bob", "connections": 1}]
        await hub.leave(LOBBY, "alice", "a1")  # alice is still here
        await hub.leave(LOBBY, "alice", "a2")
        await hub.leave(LOBBY, "alice", "a2")  # already gone: nothing
        await hub.leave(LOBBY, "nobody", "n1")
        await hub.publish(LOBBY, {"type": "sentinel"})
        frames = [body(m) for m in await take(sub, 4)]
        assert await hub.presence(LOBBY) == [{"id": "bob", "connections": 1}]
    assert frames[:3] == [
        {"type": "join", "channel": LOBBY, "sender": "alice"},
        {"type": "join", "channel": LOBBY, "sender": "bob"},
        {"type": "leave", "channel": LOBBY, "sender": "alice"},
    ]
    assert frames[3]["type"] == "sentinel"  # nothing else came between


async def test_hub_presence_frames_gathered_and_delivered_before_the_next_message(
        make_hub, monkeypatch) -> None:
    """Joins wait for the window (a long one here), then go out together; a message with an id
    arriving first takes them along, ahead of itself, so the order is kept."""
    monkeypatch.setattr(hub_module, "LIVE_WINDOW_S", 30.0)
    hub = await make_hub()
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], connection_id="observer") as sub:
        for user in ("alice", "bob", "carol"):
            await hub.join(LOBBY, user, f"{user}1")
        assert sub.backlog == 0  # gathered, not delivered yet
        await hub.publish(LOBBY, {"type": "chat", "text": "hi"}, sender="carol")
        frames = [body(m) for m in sub.take()]
    assert [(f["type"], f["sender"]) for f in frames] == [
        ("join", "alice"), ("join", "bob"), ("join", "carol"), ("chat", "carol")]


async def test_hub_presence_window_is_one_hand_off_per_member(make_hub, monkeypatch) -> None:
    """A socket that takes it gets the window's frames in one write (their bytes back to back);
    a backed-up one gets them queued one by one, in order, ahead of what follows."""
    monkeypatch.setattr(hub_module, "LIVE_WINDOW_S", 30.0)
    hub = await make_hub()
    written: list[bytes] = []

    def take_at_once(message: Message) -> bool:
        written.append(message.ws_frame)
        return True

    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], connection_id="d") as direct, \
            hub.subscribe([LOBBY], connection_id="q") as queued:
        direct.write_now = take_at_once
        queued.write_now = lambda message: False  # a socket past its high-water mark
        for user in ("alice", "bob", "carol"):
            await hub.join(LOBBY, user, f"{user}1")
        await hub.publish(LOBBY, {"type": "chat", "text": "hi"}, sender="dave")
        frames = queued.take()
    joins = [Message(LOBBY, presence_frame("join", LOBBY, u)) for u in ("alice", "bob", "carol")]
    assert written[0] == b"".join(j.ws_frame for j in joins)
    assert len(written) == 2 and b'"text":"hi"' in written[1]
    assert [(body(m)["type"], body(m)["sender"]) for m in frames] == [
        ("join", "alice"), ("join", "bob"), ("join", "carol"), ("chat", "dave")]
    assert hub.delivered() == 2 * 4


async def test_hub_delivered_counts_what_subscribers_got_not_the_senders_own(make_hub) -> None:
    hub = await make_hub()
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], connection_id="sender") as sender, \
            hub.subscribe([LOBBY], connection_id="other") as other:
        await hub.publish(LOBBY, {"type": "chat", "text": "mine"}, sender="a", origin="sender")
        await hub.publish(LOBBY, {"type": "chat", "text": "server"})
        assert len(await take(other, 2)) == 2 and len(await take(sender, 1)) == 1
        sender.send_frame('{"type":"ack","id":"x","ref":"1"}')  # its own frames are not messages
        assert hub.delivered() == 3
    assert hub.delivered() == 3  # kept once the subscriptions ended


async def test_hub_delivered_counts_a_replayed_message_once(make_hub) -> None:
    hub = await make_hub()
    sent = [await hub.publish(LOBBY, {"n": n}) for n in range(3)]
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY], cursor=sent[0].id) as sub:
        assert len(await take(sub, 2)) == 2
        assert hub.delivered() == 2


async def test_hub_presence_frames_carry_no_id(make_hub) -> None:
    hub = await make_hub()
    async with asyncio.timeout(TIMEOUT_S), hub.subscribe([LOBBY]) as sub:
        await hub.join(LOBBY, "alice", "a1")
        (frame,) = await take(sub, 1)
    assert frame.id is None
    assert b"id:" not in frame.sse


async def test_hub_counts_stay_true_across_closes_and_are_not_summed_again_while_idle(make_hub) -> None:
    hub = await make_hub()
    async with asyncio.timeout(TIMEOUT_S):
        async with hub.subscribe([LOBBY], connection_id="a") as a:
            async with hub.subscribe([LOBBY], connection_id="b"):
                await hub.publish(LOBBY, {"type": "chat", "text": "1"})
                assert (hub.delivered(), hub.queued()) == (2, 2)
            assert (hub.delivered(), hub.queued()) == (2, 1)  # b's count retired, not lost or doubled
            await take(a, 1)
            assert hub.queued() == 0
            counted = hub._counted
            assert (hub.delivered(), hub.queued()) == (2, 0) and hub._counted is counted  # idle: no walk
            await hub.publish(LOBBY, {"type": "chat", "text": "2"})
            assert (hub.delivered(), hub.queued()) == (3, 1)
        assert hub.delivered() == 3


async def test_hub_open_subscription_closed_stops_its_replay_and_unregisters(make_hub) -> None:
    # The pair the live endpoints use instead of ``async with hub.subscribe()``: closing ends
    # the replay still paging (nothing more reaches the subscription) and drops every entry.
    hub = await make_hub(MemoryBackend(history_size=100), outbox_size=10)
    sent = [await hub.publish(LOBBY, {"n": n}) for n in range(50)]
    sub = await hub.open_subscription((LOBBY,), cursor=sent[0].id, connection_id="c1")
    assert sub.channels == (LOBBY,)
    assert len(hub._replays) == 1  # the first page is queued; the rest waits for the reader
    replay = hub._replays[sub]
    await hub.close_subscription(sub)
    await hub.close_subscription(sub)  # a second close is a no-op
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.wait([replay])
    assert replay.cancelled()
    assert sub.closed and not hub._replays
    assert dict(hub.subscriber_counts()).get(LOBBY, 0) == 0


async def test_hub_open_subscription_replay_done_is_forgotten(make_hub) -> None:
    hub = await make_hub(MemoryBackend(history_size=100), outbox_size=10)
    sent = [await hub.publish(LOBBY, {"n": n}) for n in range(20)]
    sub = await hub.open_subscription([LOBBY], cursor=sent[0].id)
    try:
        replay = hub._replays[sub]
        assert [body(m)["n"] for m in await take(sub, 19)] == list(range(1, 20))
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.wait([replay])
        assert not hub._replays  # the task dropped its entry as it ended
    finally:
        await hub.close_subscription(sub)
