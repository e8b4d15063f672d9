"""The Backend contract: MemoryBackend and RedisBackend both pass every test here.

The tests marked ``redis`` at the end need several processes' worth of backends,
or a Redis that goes away: what only the Redis backend can do.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio import ConnectionError as RedisConnectionError

import hubbub.hub.backends.redis as redis_backend
import hubbub.hub.backends.redis_link as redis_link
from hubbub.hub.backends.base import Backend, BackendUnavailable, Bucket, Throttled
from hubbub.hub.backends.redis import RedisBackend
from hubbub.hub.message import Cursor, History, Message, dumps
from tests.backends.conftest import REDIS_URL, Inbox, MakeBackend, RedisServer, poll

MakeRedis = Callable[..., RedisBackend]


def body(**fields: Any) -> str:
    """An encoded body, as the hub hands it to publish()."""
    return dumps({"channel": "x", "sender": None, **fields})


async def publish_many(backend: Backend, channel: str, count: int) -> list[Message]:
    return [await backend.publish(channel, body(n=n)) for n in range(count)]


def ids(messages: list[Message]) -> list[str | None]:
    return [m.id for m in messages]


# -- ids and history -------------------------------------------------------------------


async def test_publish_ids_strictly_increase_across_channels(backend: Backend) -> None:
    published = [await backend.publish(c, body(n=n)) for n, c in enumerate("abacb")]

    seqs = [m.seq or 0 for m in published]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len({m.epoch for m in published}) == 1
    for n, (m, channel) in enumerate(zip(published, "abacb", strict=True)):
        assert m.channel == channel
        assert m.id == f"{m.epoch}-{m.seq}" and Cursor.parse(m.id) == Cursor(m.epoch, m.seq or 0)
        assert m.json.startswith(f'{{"id":"{m.id}",')
        assert json.loads(m.json) == {"id": m.id, **json.loads(body(n=n))}


async def test_history_after_cursor_returns_exactly_the_later_ones_in_order(
    backend: Backend,
) -> None:
    a = await publish_many(backend, "room:a", 3)
    b = await backend.publish("room:b", body(n=9))
    a.append(await backend.publish("room:a", body(n=3)))
    await backend.publish("room:c", body(n=10))  # not asked for

    history = await backend.history(["room:a", "room:b"], Cursor.parse(a[0].id), 100)

    assert history.recovered
    assert ids(history.messages) == ids([a[1], a[2], b, a[3]])
    assert [m.json for m in history.messages] == [m.json for m in (a[1], a[2], b, a[3])]
    assert [m.channel for m in history.messages] == ["room:a", "room:a", "room:b", "room:a"]
    latest = await backend.history(["room:a", "room:b"], Cursor.parse(a[3].id), 100)
    assert latest.recovered and latest.messages == []


async def test_history_without_cursor_returns_the_latest_n(backend: Backend) -> None:
    published = await publish_many(backend, "room:a", 5)

    history = await backend.history(["room:a"], None, 3)

    assert history.recovered
    assert ids(history.messages) == ids(published[-3:])


async def test_history_limit_caps_the_messages_after_a_cursor(backend: Backend) -> None:
    published = await publish_many(backend, "room:a", 5)

    history = await backend.history(["room:a"], Cursor.parse(published[0].id), 2)

    assert history.recovered
    assert ids(history.messages) == ids(published[1:3])


async def test_history_cursor_from_another_epoch_is_not_recovered(backend: Backend) -> None:
    published = await publish_many(backend, "room:a", 3)

    for cursor in (Cursor("0ther", published[0].seq or 0), Cursor.parse("garbage")):
        history = await backend.history(["room:a"], cursor, 2)
        assert not history.recovered
        assert ids(history.messages) == ids(published[:2])  # retained, from the start


async def test_history_cursor_older_than_the_retained_is_not_recovered(
    make_backend: MakeBackend,
) -> None:
    backend = make_backend(history_size=3)
    published = await publish_many(backend, "room:a", 5)  # the first two are trimmed

    stale = await backend.history(["room:a"], Cursor.parse(published[0].id), 10)
    at_edge = await backend.history(["room:a"], Cursor.parse(published[1].id), 10)

    assert not stale.recovered
    assert ids(stale.messages) == ids(published[2:])
    assert at_edge.recovered  # the newest trimmed one was seen: nothing is missing
    assert ids(at_edge.messages) == ids(published[2:])


async def test_history_expired_after_cursor_is_not_recovered(make_backend: MakeBackend) -> None:
    backend = make_backend(history_ttl_s=0.2)
    published = await publish_many(backend, "room:a", 2)
    cursor = Cursor.parse(published[0].id)
    assert (await backend.history(["room:a"], cursor, 10)).recovered

    async def lost() -> History | None:
        history = await backend.history(["room:a"], cursor, 10)
        return None if history.recovered else history

    history = await poll(lost, timeout=5)
    assert history is not None and history.messages == []
    empty = await backend.history(["room:a"], Cursor.parse(published[1].id), 10)
    assert empty.recovered  # nothing was published after this one


async def history_dropped(backend: Backend, channel: str) -> bool:
    return (await backend.history([channel], None, 10)).messages == []


async def test_history_of_a_channel_quiet_past_the_ttl_is_dropped(make_backend: MakeBackend) -> None:
    backend = make_backend(history_ttl_s=1.0)
    published = await publish_many(backend, "room:a", 3)
    assert ids((await backend.history(["room:a"], None, 10)).messages) == ids(published)

    assert await poll(lambda: history_dropped(backend, "room:a"), timeout=5)

    after_last = await backend.history(["room:a"], Cursor.parse(published[-1].id), 10)
    before_lost = await backend.history(["room:a"], Cursor.parse(published[0].id), 10)
    assert after_last.recovered and after_last.messages == []  # nothing was lost after it
    assert not before_lost.recovered and before_lost.messages == []


async def test_history_channel_active_again_after_expiry_still_reports_the_lost_ones(
    make_backend: MakeBackend,
) -> None:
    backend = make_backend(history_ttl_s=1.0)
    lost = await publish_many(backend, "room:a", 2)
    assert await poll(lambda: history_dropped(backend, "room:a"), timeout=5)

    again = await backend.publish("room:a", body(n=2))

    stale = await backend.history(["room:a"], Cursor.parse(lost[0].id), 10)
    at_last = await backend.history(["room:a"], Cursor.parse(lost[1].id), 10)
    assert not stale.recovered and ids(stale.messages) == [again.id]
    assert at_last.recovered and ids(at_last.messages) == [again.id]


async def test_history_busy_channel_keeps_old_messages_while_active(make_backend: MakeBackend) -> None:
    backend = make_backend(history_ttl_s=1.0, history_size=100)
    published: list[Message] = []
    deadline = time.monotonic() + 2.5  # 2.5 TTLs, never quiet for one
    while time.monotonic() < deadline:
        published.append(await backend.publish("room:a", body(n=len(published))))
        await asyncio.sleep(0.2)

    history = await backend.history(["room:a"], Cursor.parse(published[0].id), 100)
    assert history.recovered and ids(history.messages) == ids(published[1:])
    assert ids((await backend.history(["room:a"], None, 100)).messages) == ids(published)


# -- delivery --------------------------------------------------------------------------


async def test_publish_delivers_only_subscribed_channels_in_order(
    backend: Backend, inbox: Inbox
) -> None:
    await backend.subscribe("room:a")
    await backend.publish("room:b", body(n=0))
    published = [await backend.publish("room:a", body(n=n), origin="conn-1") for n in (1, 2, 3)]

    delivered = await inbox.wait_for(3)
    published.append(await backend.publish("room:a", body(n=4)))  # in order: b would be here
    delivered = await inbox.wait_for(4)

    assert ids(delivered) == ids(published)
    assert [m.json for m in delivered] == [m.json for m in published]
    assert [m.origin for m in delivered] == ["conn-1", "conn-1", "conn-1", None]
    assert len(inbox.messages) == 4


async def test_publish_live_delivers_without_id_and_stays_out_of_history(
    backend: Backend, inbox: Inbox
) -> None:
    await backend.subscribe("room:a")
    frame = dumps({"type": "join", "channel": "room:a", "sender": "ann"})

    await backend.publish_live("room:a", frame)
    await backend.publish_live("room:b", frame)  # not subscribed
    (delivered,) = await inbox.wait_for(1)

    assert delivered.id is None and delivered.seq is None
    assert delivered.json == frame and delivered.channel == "room:a"
    assert (await backend.history(["room:a"], None, 10)).messages == []
    sentinel = await backend.publish("room:a", body())
    assert ids(await inbox.wait_for(2)) == [None, sentinel.id]


async def test_unsubscribe_stops_delivery(backend: Backend, inbox: Inbox) -> None:
    await backend.subscribe("room:a")
    await backend.subscribe("room:b")
    await backend.unsubscribe("room:a")

    await backend.publish("room:a", body(n=1))
    sentinel = await backend.publish("room:b", body(n=2))

    assert ids(await inbox.wait_for(1)) == [sentinel.id]
    later = await backend.publish("room:b", body(n=3))
    assert ids(await inbox.wait_for(2)) == [sentinel.id, later.id]


async def test_resubscribe_after_unsubscribe_delivers_once(backend: Backend, inbox: Inbox) -> None:
    await asyncio.gather(backend.subscribe("room:a"), backend.subscribe("room:a"))
    await backend.unsubscribe("room:a")
    await backend.subscribe("room:a")

    first = await backend.publish("room:a", body(n=1))
    second = await backend.publish("room:a", body(n=2))

    assert ids(await inbox.wait_for(2)) == [first.id, second.id]
    third = await backend.publish("room:a", body(n=3))
    assert ids(await inbox.wait_for(3)) == [first.id, second.id, third.id]


# -- presence, rate limits, tickets, health --------------------------------------------


async def test_presence_first_and_last_connection_of_a_user(backend: Backend) -> None:
    """A join (first connection) and a leave (last) say how many users the room has then."""
    assert await backend.presence_add("room:a", "ann", "c1") == 1
    assert await backend.presence_add("room:a", "ann", "c2") is None
    assert await backend.presence_add("room:a", "bob", "c3") == 2
    assert await backend.presence_add("room:b", "cat", "c4") == 1
    assert await backend.presence("room:a") == {"ann": 2, "bob": 1}
    assert await backend.presence("room:c") == {}

    assert await backend.presence_remove("room:a", "ann", "c1") is None
    assert await backend.presence_remove("room:a", "ann", "c1") is None  # already gone
    assert await backend.presence_remove("room:a", "ann", "c2") == 1  # bob is left
    assert await backend.presence_remove("room:a", "nobody", "c9") is None
    assert await backend.presence("room:a") == {"bob": 1}
    assert await backend.presence_remove("room:a", "bob", "c3") == 0


async def test_presence_of_a_user_whose_connections_come_and_go(backend: Backend) -> None:
    """Two, one, two again, none: only the first and the last are a join and a leave."""
    assert await backend.presence_add("room:a", "ann", "c1") == 1
    assert await backend.presence_remove("room:a", "ann", "c9") is None  # not one of hers
    assert await backend.presence_add("room:a", "ann", "c2") is None
    assert await backend.presence_remove("room:a", "ann", "c1") is None
    assert await backend.presence("room:a") == {"ann": 1}
    assert await backend.presence_add("room:a", "ann", "c3") is None
    assert await backend.presence("room:a") == {"ann": 2}
    assert await backend.presence_remove("room:a", "ann", "c2") is None
    assert await backend.presence_remove("room:a", "ann", "c3") == 0
    assert await backend.presence("room:a") == {}


async def test_take_token_allows_a_burst_then_refuses_then_refills(backend: Backend) -> None:
    rate = 20.0
    assert [await backend.take_token("ann", rate, 3) for _ in range(3)] == [0.0, 0.0, 0.0]

    wait = await backend.take_token("ann", rate, 3)
    assert 0.0 < wait <= 1 / rate + 0.01
    assert await backend.take_token("bob", rate, 3) == 0.0  # buckets are per key

    async def refilled() -> bool:
        return await backend.take_token("ann", rate, 3) == 0.0

    assert await poll(refilled, timeout=2)


async def test_take_token_cost_takes_several_at_once(backend: Backend) -> None:
    assert await backend.take_token("batch", 0.01, 10, cost=7) == 0.0
    wait = await backend.take_token("batch", 0.01, 10, cost=7)  # 3 left: 4 short, at 0.01/s
    assert 399 < wait < 401
    assert await backend.take_token("batch", 0.01, 10, cost=3) == 0.0


async def test_publish_within_publishes_while_the_bucket_has_tokens_and_nothing_after(
    backend: Backend, inbox: Inbox
) -> None:
    await backend.subscribe("room:a")
    bucket = Bucket("ann", 0.01, 2)
    published = [await backend.publish_within(bucket, "room:a", body(n=n), origin="c1") for n in (1, 2)]

    with pytest.raises(Throttled) as refused:
        await backend.publish_within(bucket, "room:a", body(n=3))
    after = await backend.publish("room:a", body(n=4))  # unlimited: goes out

    assert 99 < refused.value.wait_s <= 100.1  # one token at 0.01/s
    delivered = await inbox.wait_for(3)
    assert ids(delivered) == ids([*published, after])
    assert [m.origin for m in delivered] == ["c1", "c1", None]
    history = await backend.history(["room:a"], None, 10)
    assert [json.loads(m.json)["n"] for m in history.messages] == [1, 2, 4]
    assert await backend.take_token("ann", 0.01, 2) > 0  # the same bucket as take_token's


async def test_publish_within_takes_its_cost(backend: Backend) -> None:
    await backend.publish_within(Bucket("batch", 0.01, 10, cost=7), "room:a", body(n=1))

    with pytest.raises(Throttled) as refused:
        await backend.publish_within(Bucket("batch", 0.01, 10, cost=7), "room:a", body(n=2))

    assert 399 < refused.value.wait_s < 401  # 3 left: 4 short
    assert await backend.take_token("batch", 0.01, 10, cost=3) == 0.0


async def test_idempotency_claim_new_pending_done_mismatch(backend: Backend) -> None:
    assert await backend.idempotency_claim("k", "fp1", "n1", 60) == ("new", None)
    assert await backend.idempotency_claim("k", "fp1", "n1", 60) == ("new", None)  # its own retry
    assert await backend.idempotency_claim("k", "fp1", "n2", 60) == ("pending", None)
    assert await backend.idempotency_claim("k", "fp2", "n3", 60) == ("mismatch", None)
    await backend.idempotency_complete("k", "fp1", '202 {"id":"e-1"}', 60)
    assert await backend.idempotency_claim("k", "fp1", "n4", 60) == ("done", '202 {"id":"e-1"}')
    assert await backend.idempotency_claim("k", "fp2", "n5", 60) == ("mismatch", None)


async def test_idempotency_release_lets_a_retry_run_again(backend: Backend) -> None:
    assert await backend.idempotency_claim("r", "fp", "first", 60) == ("new", None)
    await backend.idempotency_release("r", "other")  # not its claim: kept
    assert await backend.idempotency_claim("r", "fp", "second", 60) == ("pending", None)
    await backend.idempotency_release("r", "first")
    assert await backend.idempotency_claim("r", "fp", "second", 60) == ("new", None)


async def test_idempotency_pending_claim_lapses(backend: Backend) -> None:
    assert await backend.idempotency_claim("p", "fp", "died", 0.2) == ("new", None)

    async def lapsed() -> bool:
        return await backend.idempotency_claim("p", "fp", "next", 0.2) == ("new", None)

    assert await poll(lapsed, timeout=3)


async def test_connection_add_refuses_past_the_limit_and_remove_frees_a_slot(
    backend: Backend,
) -> None:
    assert [await backend.connection_add("ann", f"c{n}", 2) for n in range(3)] == [True, True, False]
    assert await backend.connection_add("bob", "c9", 2) is True  # limits are per user

    await backend.connection_remove("ann", "c0")
    await backend.connection_remove("ann", "c0")  # idempotent
    await backend.connection_remove("ann", "never-added")

    assert await backend.connection_add("ann", "c2", 2) is True
    assert await backend.connection_add("ann", "c3", 2) is False


async def test_connection_added_twice_counts_once(backend: Backend) -> None:
    assert await backend.connection_add("ann", "c1", 2) is True
    assert await backend.connection_add("ann", "c1", 2) is True  # already counted: still fine

    assert await backend.connection_add("ann", "c2", 2) is True
    assert await backend.connection_add("ann", "c1", 2) is True  # at the limit, but its own slot
    assert await backend.connection_add("ann", "c3", 2) is False


async def test_tickets_redeem_once(backend: Backend) -> None:
    await backend.store_ticket("t1", '{"sub":"ann"}', 30)

    assert await backend.redeem_ticket("t1") == '{"sub":"ann"}'
    assert await backend.redeem_ticket("t1") is None
    assert await backend.redeem_ticket("never-stored") is None


async def test_ping_is_true_when_reachable(backend: Backend) -> None:
    assert await backend.ping() is True


# -- Redis only: several processes, lost connections, an unreachable Redis --------------


async def started(backend: RedisBackend, inbox: Inbox | None = None) -> RedisBackend:
    await backend.start(inbox if inbox is not None else Inbox())
    return backend


@pytest.mark.redis
async def test_redis_publish_reaches_another_process_with_the_same_id(make_redis: MakeRedis) -> None:
    inbox_a, inbox_b = Inbox(), Inbox()
    a, b = await started(make_redis(), inbox_a), await started(make_redis(), inbox_b)
    channels = [f"room:{n}" for n in range(20)]

    published = []
    for channel in channels:  # each publish right after subscribe() returned
        await b.subscribe(channel)
        published.append(await a.publish(channel, body(), origin="conn-a"))

    delivered = await inbox_b.wait_for(len(channels))
    assert ids(delivered) == ids(published)
    assert [m.json for m in delivered] == [m.json for m in published]
    assert {m.origin for m in delivered} == {"conn-a"}
    assert inbox_a.messages == []  # a subscribed to nothing
    resumed = await b.history(channels, Cursor.parse(published[9].id), 100)  # resume on b
    assert resumed.recovered and ids(resumed.messages) == ids(published[10:])


@pytest.mark.redis
async def test_redis_presence_first_connection_counts_across_processes(
    make_redis: MakeRedis,
) -> None:
    a, b = make_redis(), make_redis()

    assert await a.presence_add("room:a", "ann", "c1") == 1
    assert await b.presence_add("room:a", "ann", "c2") is None
    assert await b.presence_add("room:a", "bob", "c3") == 2
    assert await a.presence("room:a") == {"ann": 2, "bob": 1}
    assert await a.presence_remove("room:a", "ann", "c1") is None
    assert await b.presence_remove("room:a", "ann", "c2") == 1
    assert await a.presence_remove("room:a", "bob", "c3") == 0
    assert await a.presence("room:a") == {}


@pytest.mark.redis
async def test_redis_ticket_stored_on_one_process_redeems_once_on_another(
    make_redis: MakeRedis,
) -> None:
    a, b = make_redis(), make_redis()
    await a.store_ticket("t1", "payload", 30)

    assert await b.redeem_ticket("t1") == "payload"
    assert await a.redeem_ticket("t1") is None
    await a.store_ticket("t2", "payload", 30)
    results = await asyncio.gather(a.redeem_ticket("t2"), b.redeem_ticket("t2"))
    assert sorted(results, key=str) == [None, "payload"]  # exactly one got it


@pytest.mark.redis
async def test_redis_rate_limit_is_shared_across_processes(make_redis: MakeRedis) -> None:
    a, b = make_redis(), make_redis()

    assert await a.take_token("ann", 0.5, 2) == 0.0
    assert await b.take_token("ann", 0.5, 2) == 0.0
    assert await a.take_token("ann", 0.5, 2) > 1.0


@pytest.mark.redis
async def test_redis_ghost_presence_of_a_dead_process_expires(make_redis: MakeRedis) -> None:
    a, b = await started(make_redis(presence_ttl_s=0.5)), make_redis()
    await a.presence_add("room:a", "ann", "c1")

    deadline = time.monotonic() + 1.5  # three TTLs: a's refresher keeps it alive
    while time.monotonic() < deadline:
        assert await b.presence("room:a") == {"ann": 1}
        await asyncio.sleep(0.05)
    await a.close()  # dies without presence_remove

    async def gone() -> bool:
        return await b.presence("room:a") == {}

    assert await poll(gone, timeout=5)
    assert await b.presence_add("room:a", "ann", "c2") == 1


@pytest.mark.redis
async def test_redis_presence_renewal_in_batches_keeps_every_connection(
        make_redis: MakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_backend, "RENEW_BATCH", 2)  # 5 connections: three script calls
    a, b = await started(make_redis(presence_ttl_s=0.5)), make_redis()
    for n in range(5):
        await a.presence_add("room:a", f"user{n % 3}", f"c{n}")
    await a.presence_add("room:b", "ann", "c9")

    deadline = time.monotonic() + 1.5  # three TTLs: only the renewals keep them
    while time.monotonic() < deadline:
        assert await b.presence("room:a") == {"user0": 2, "user1": 2, "user2": 1}
        assert await b.presence("room:b") == {"ann": 1}
        await asyncio.sleep(0.05)
    await a.close()


@pytest.mark.redis
async def test_redis_presence_renewal_pipelines_the_channels(make_redis: MakeRedis) -> None:
    """300 rooms renew in two round trips (256 calls, then 44), not one each: one at a time,
    1,000 rooms took a quarter of a second of CPU every renewal."""
    a, b = make_redis(), make_redis()
    for n in range(300):
        a._local_presence.add((f"room:r{n}", f"user{n}", f"c{n}"))  # as presence_add leaves it
    before = a._batch.batches

    await a._renew_presence()

    assert a._batch.batches - before == 2
    assert await b.presence("room:r0") == {"user0": 1}
    assert await b.presence("room:r299") == {"user299": 1}


@pytest.mark.redis
async def test_redis_take_token_script_run_twice_with_one_once_key_takes_one_token(
    make_redis: MakeRedis, redis_prefix: str,
) -> None:
    backend = make_redis()
    keys = [f"{redis_prefix}tb:ann", f"{redis_prefix}once:retried"]

    first = await backend._take_token(keys=keys, args=["0.001", 2])
    retry = await backend._take_token(keys=keys, args=["0.001", 2])  # what redis-py re-sends

    assert float(first) == float(retry) == 0.0
    assert await backend.take_token("ann", 0.001, 2) == 0.0  # the second of two tokens
    assert await backend.take_token("ann", 0.001, 2) > 0.0


def lose_next_reply(backend: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The next command runs in Redis but its reply is lost with the connection: the batch is
    sent again on a new one."""
    replied = redis_link._Wire.replied
    lost: list[str] = []

    def losing(wire: Any, reply: Any) -> None:
        if lost:
            replied(wire, reply)
            return
        lost.append(str(reply))
        wire.drop(RedisConnectionError("connection reset after the script ran"))

    monkeypatch.setattr(redis_link._Wire, "replied", losing)
    return lost


@pytest.mark.redis
async def test_redis_take_token_retried_after_a_lost_reply_takes_one_token(
    make_redis: MakeRedis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = make_redis()
    await backend.take_token("warm-up", 1.0, 1)  # the script is loaded: the next call is EVALSHA
    lost = lose_next_reply(backend, monkeypatch)

    assert await backend.take_token("ann", 0.001, 2) == 0.0
    assert lost  # the reply was lost once and the call retried
    assert await backend.take_token("ann", 0.001, 2) == 0.0  # the second of two tokens
    assert await backend.take_token("ann", 0.001, 2) > 0.0


@pytest.mark.redis
async def test_redis_publish_within_retried_after_a_lost_reply_publishes_once_takes_one_token(
    make_redis: MakeRedis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    inbox = Inbox()
    backend = await started(make_redis(), inbox)
    await backend.subscribe("room:a")
    bucket = Bucket("ann", 0.001, 2)
    await backend.publish_within(Bucket("warm-up", 1.0, 1), "room:w", body(n=0))  # now EVALSHA
    lost = lose_next_reply(backend, monkeypatch)

    first = await backend.publish_within(bucket, "room:a", body(n=1))

    assert lost  # the reply was lost once and the call retried: same id, one token
    assert lost[0] == str([first.epoch, first.seq])
    second = await backend.publish_within(bucket, "room:a", body(n=2))
    with pytest.raises(Throttled):
        await backend.publish_within(bucket, "room:a", body(n=3))
    assert ids(await inbox.wait_for(2)) == [first.id, second.id]
    assert ids((await backend.history(["room:a"], None, 10)).messages) == [first.id, second.id]
    await backend.close()


@pytest.mark.redis
async def test_redis_connection_add_retried_after_a_lost_reply_counts_once(
    make_redis: MakeRedis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = make_redis()
    await backend.connection_add("ann", "c1", 2)  # the script is loaded: the next call is EVALSHA
    lost = lose_next_reply(backend, monkeypatch)

    assert await backend.connection_add("bob", "c2", 2) is True
    assert lost == ["1"]  # the first run counted it; the retry was answered from its once-key
    assert await backend.connection_add("bob", "c3", 2) is True
    assert await backend.connection_add("bob", "c4", 2) is False


@pytest.mark.redis
async def test_redis_connection_limit_is_shared_across_processes(make_redis: MakeRedis) -> None:
    a, b = make_redis(), make_redis()

    assert await a.connection_add("ann", "c1", 2) is True
    assert await b.connection_add("ann", "c2", 2) is True
    assert await a.connection_add("ann", "c3", 2) is False
    assert await b.connection_add("ann", "c4", 2) is False
    await a.connection_remove("ann", "c1")
    assert await b.connection_add("ann", "c4", 2) is True


@pytest.mark.redis
async def test_redis_connections_of_a_dead_process_expire_and_free_their_slots(
    make_redis: MakeRedis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_backend, "RENEW_BATCH", 2)  # 5 connections: three script calls
    a, b = await started(make_redis(presence_ttl_s=0.5)), make_redis()
    for n in range(5):
        assert await a.connection_add(f"user{n % 3}", f"c{n}", 2) is True

    deadline = time.monotonic() + 1.5  # three TTLs: only the renewals keep them
    while time.monotonic() < deadline:
        assert await b.connection_add("user0", "b0", 2) is False
        assert await b.connection_add("user1", "b1", 2) is False
        await asyncio.sleep(0.1)
    await a.close()  # dies without connection_remove

    async def freed() -> bool:
        return await b.connection_add("user0", "b0", 2) and await b.connection_add("user1", "b1", 2)

    assert await poll(freed, timeout=5)
    assert await b.connection_add("user0", "b2", 2) is True  # both of a's slots, not just one


async def kill_listeners(prefix: str) -> int:
    """Kills the pub/sub connections of the backends using ``prefix``: a dropped link."""
    client = aioredis.from_url(REDIS_URL, decode_responses=True)
    try:
        clients = await client.client_list(_type="pubsub")
        killed = [c["id"] for c in clients if c["name"] == f"{prefix}listener"]
        for client_id in killed:
            await client.client_kill_filter(_id=client_id)
        return len(killed)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_listener_reconnects_and_catches_up_exactly_once_in_order(
    make_redis: MakeRedis, redis_prefix: str
) -> None:
    inbox = Inbox()
    publisher, subscriber = make_redis(), await started(make_redis(), inbox)
    await subscriber.subscribe("room:a")
    await subscriber.subscribe("room:b")
    before = await publisher.publish("room:a", body(n=0))
    await inbox.wait_for(1)

    assert await kill_listeners(redis_prefix) == 1
    during = [await publisher.publish(f"room:{c}", body(n=n)) for n, c in enumerate("abab", 1)]
    delivered = await inbox.wait_for(5, timeout=10)  # these come from the stream
    after = await publisher.publish("room:b", body(n=5))
    delivered = await inbox.wait_for(6, timeout=10)

    assert ids(delivered) == ids([before, *during, after])
    assert await kill_listeners(redis_prefix) == 1  # a new connection, and only one


@pytest.mark.redis
async def test_redis_gap_longer_than_history_during_an_outage_asks_for_a_resync(
    make_redis: MakeRedis, redis_prefix: str
) -> None:
    inbox = Inbox()
    publisher = make_redis(history_size=3)
    subscriber = await started(make_redis(history_size=3), inbox)
    await subscriber.subscribe("room:a")
    await publisher.publish("room:a", body(n=0))
    await inbox.wait_for(1)

    assert await kill_listeners(redis_prefix) == 1
    during = [await publisher.publish("room:a", body(n=n)) for n in range(1, 11)]  # 10 > 3 kept

    async def got_the_last() -> bool:
        return any(m.seq == during[-1].seq for m in inbox.messages)

    assert await poll(got_the_last, timeout=10)
    kinds = [m.json if m.seq is None else "message" for m in inbox.messages]
    assert kinds.count('{"type":"resync"}') == 1  # the gap was noticed, once
    after_resync = inbox.messages[kinds.index('{"type":"resync"}') + 1:]
    # After the resync: what was still retained (at least the last 3), in order, none twice.
    assert ids(after_resync) == ids(during[-len(after_resync):]) and len(after_resync) >= 3


@pytest.mark.redis
async def test_redis_unreachable_publish_fails_fast_then_recovers(
    make_redis: MakeRedis, private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_backend, "SUBSCRIBE_TIMEOUT_S", 0.5)
    inbox = Inbox()
    publisher = make_redis(private_redis.url)
    subscriber = await started(make_redis(private_redis.url), inbox)
    await subscriber.subscribe("room:a")
    first = await publisher.publish("room:a", body(n=1))
    await inbox.wait_for(1)

    await private_redis.stop()
    started_at = time.monotonic()
    with pytest.raises(BackendUnavailable):
        async with asyncio.timeout(10):
            await publisher.publish("room:a", body(n=2))
    assert time.monotonic() - started_at < 5
    assert await publisher.ping() is False
    with pytest.raises(BackendUnavailable):
        await subscriber.subscribe("room:b")

    await private_redis.start()  # empty: a new epoch
    async with asyncio.timeout(10):  # until the command client has reconnected
        while True:
            try:
                second = await publisher.publish("room:a", body(n=3))
                break
            except BackendUnavailable:
                await asyncio.sleep(0.05)
    assert await publisher.ping() is True
    assert second.epoch != first.epoch
    assert ids(await inbox.wait_for(2, timeout=15)) == [first.id, second.id]
    third = await publisher.publish("room:a", body(n=4))
    assert ids(await inbox.wait_for(3)) == [first.id, second.id, third.id]
    await subscriber.subscribe("room:b")


@pytest.mark.redis
async def test_redis_tls_url_accepts_a_self_signed_certificate(
    make_redis: MakeRedis, tls_redis: RedisServer
) -> None:
    inbox = Inbox()
    backend = await started(make_redis(tls_redis.url), inbox)

    assert tls_redis.url.startswith("rediss://")
    assert await backend.ping() is True
    await backend.subscribe("room:a")
    published = await backend.publish("room:a", body())
    assert ids(await inbox.wait_for(1)) == [published.id]


async def test_a_crowd_at_once_is_served_not_refused(backend: Backend) -> None:
    """A reconnect storm: hundreds of joins and history reads in flight together all succeed
    (redis-py's default pool refused every command past 100 at once with "Too many
    connections"; they now wait for a connection)."""
    channel = "room:storm"
    await backend.publish(channel, '{"type":"chat","text":"before"}')
    joins = [backend.presence_add(channel, f"u{i}", f"c{i}") for i in range(300)]
    reads = [backend.history([channel], None, 10) for _ in range(300)]
    async with asyncio.timeout(20):
        results = await asyncio.gather(*joins, *reads)
    assert sorted(r for r in results[:300] if r is not None)[-1] == 300
    assert all(len(page.messages) == 1 for page in results[300:])
    assert len(await backend.presence(channel)) == 300
