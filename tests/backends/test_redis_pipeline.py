"""AutoPipeline on the real Redis: commands of one loop turn share a pipeline, each caller
still gets its own result or error, and a batch that met a lost connection is sent again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from hubbub.hub.backends import redis as redis_backend
from hubbub.hub.backends.redis import RedisBackend
from hubbub.hub.backends.redis_link import RedisLink
from hubbub.hub.backends.redis_pipeline import MAX_BATCH, RETRIES, AutoPipeline
from hubbub.hub.message import Cursor, Message
from tests.backends.conftest import REDIS_URL, RedisServer

pytestmark = pytest.mark.redis

INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


MakeRedis = Callable[..., RedisBackend]


async def test_commands_of_one_turn_go_as_one_pipeline_each_with_its_own_reply(
        client: aioredis.Redis, redis_prefix: str) -> None:
    batch = AutoPipeline(RedisLink(REDIS_URL))
    await client.set(f"{redis_prefix}k", "v")
    script = client.register_script(INCR_BY)
    await client.script_load(INCR_BY)  # on a Redis that never ran it, NOSCRIPT costs a second batch
    async with asyncio.timeout(10):
        replies = await asyncio.gather(
            batch.call("GET", f"{redis_prefix}k"),
            *(batch.script(script, [f"{redis_prefix}n"], [i]) for i in range(1, 11)),
            batch.call("HMGET", f"{redis_prefix}none", "a", "b"),
        )
    assert replies[0] == "v"
    assert sorted(replies[1:11]) == [sum(range(1, i + 1)) for i in range(1, 11)]
    assert replies[11] == [None, None]
    assert batch.batches == 1
    await batch.close()


async def test_a_failing_command_fails_only_its_caller(client: aioredis.Redis, redis_prefix: str) -> None:
    batch = AutoPipeline(RedisLink(REDIS_URL))
    await client.set(f"{redis_prefix}text", "not a hash")
    async with asyncio.timeout(10):
        results = await asyncio.gather(batch.call("HGET", f"{redis_prefix}text", "field"),
                                       batch.call("SET", f"{redis_prefix}ok", "1"),
                                       return_exceptions=True)
    assert isinstance(results[0], ResponseError) and "WRONGTYPE" in str(results[0])
    assert results[1] == "OK"  # RESP's own reply
    assert await client.get(f"{redis_prefix}ok") == "1"
    await batch.close()


async def test_a_script_redis_forgot_is_loaded_and_run(private_redis: RedisServer) -> None:
    # A private Redis: SCRIPT FLUSH would pull scripts from under every other test.
    own = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        batch = AutoPipeline(RedisLink(private_redis.url))
        script = own.register_script(INCR_BY)
        await own.script_flush()
        async with asyncio.timeout(10):
            replies = await asyncio.gather(*(batch.script(script, ["n"], [1]) for _ in range(5)),
                                           batch.call("INCR", "m"))
        assert sorted(replies[:5]) == [1, 2, 3, 4, 5] and replies[5] == 1
        assert await own.script_exists(script.sha) == [True]
        await batch.close()
    finally:
        await own.aclose()


async def test_a_turn_bigger_than_a_batch_is_split(client: aioredis.Redis, redis_prefix: str) -> None:
    batch = AutoPipeline(RedisLink(REDIS_URL))
    n = 2 * MAX_BATCH + 1
    async with asyncio.timeout(10):
        replies = await asyncio.gather(*(batch.call("INCR", f"{redis_prefix}count") for _ in range(n)))
    assert sorted(replies) == list(range(1, n + 1))
    assert batch.batches == 3
    await batch.close()


async def test_a_cancelled_caller_leaves_the_others_their_replies(
        client: aioredis.Redis, redis_prefix: str) -> None:
    batch = AutoPipeline(RedisLink(REDIS_URL))
    first = asyncio.ensure_future(batch.call("INCR", f"{redis_prefix}c"))
    second = asyncio.ensure_future(batch.call("INCR", f"{redis_prefix}c"))
    await asyncio.sleep(0)  # both queued
    first.cancel()
    async with asyncio.timeout(10):
        assert await second in (1, 2)
    assert first.cancelled()
    await batch.close()


async def test_a_lost_redis_fails_every_caller_of_the_batch_and_a_restarted_one_is_found(
        private_redis: RedisServer) -> None:
    batch = AutoPipeline(RedisLink(private_redis.url, connect_timeout_s=1))
    assert await batch.call("PING") == "PONG"
    await private_redis.stop()
    async with asyncio.timeout(20):
        results = await asyncio.gather(*(batch.call("GET", f"k{i}") for i in range(3)),
                                       return_exceptions=True)
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    assert batch.batches == 1 + 1 + RETRIES  # sent once, then again RETRIES times
    await private_redis.start()
    async with asyncio.timeout(10):
        assert await batch.call("SET", "k", "back") == "OK"
    await batch.close()


async def test_the_backend_pipelines_a_crowd_of_publishes(make_redis: MakeRedis) -> None:
    """What the backend's hot paths gain: 200 publishes in flight go out in a few pipelines."""
    backend = make_redis()
    await backend.start(lambda message: None)
    async with asyncio.timeout(20):
        published = await asyncio.gather(
            *(backend.publish(f"room:r{i % 7}", '{"type":"chat","text":"x"}') for i in range(200)))
    assert len({m.id for m in published}) == 200
    assert backend._batch.batches <= 5


async def test_identical_history_reads_of_one_turn_are_made_once(make_redis: MakeRedis) -> None:
    """A storm's resumes from one id share a read; a read asked later is a read of its own."""
    backend = make_redis()
    await backend.start(lambda message: None)
    first = await backend.publish("room:a", '{"type":"chat","text":"one"}')
    await backend.publish("room:a", '{"type":"chat","text":"two"}')
    after = Cursor(first.epoch or "", first.seq or 0)
    async with asyncio.timeout(10):
        pages = await asyncio.gather(*(backend.history(["room:a"], after, 10) for _ in range(50)),
                                     backend.history(["room:a"], None, 10))
        assert all(page is pages[0] for page in pages[:50])
        assert [m.seq for m in pages[0].messages] == [(first.seq or 0) + 1]
        assert pages[50] is not pages[0] and len(pages[50].messages) == 2
        third = await backend.publish("room:a", '{"type":"chat","text":"three"}')
        later = await backend.history(["room:a"], after, 10)
    assert later is not pages[0]
    assert [m.id for m in later.messages][-1] == third.id


async def test_a_cancelled_asker_leaves_the_shared_read_to_the_others(make_redis: MakeRedis) -> None:
    backend = make_redis()
    await backend.start(lambda message: None)
    await backend.publish("room:a", '{"type":"chat","text":"one"}')
    gone = asyncio.ensure_future(backend.history(["room:a"], None, 10))
    kept = asyncio.ensure_future(backend.history(["room:a"], None, 10))
    await asyncio.sleep(0)
    gone.cancel()
    async with asyncio.timeout(10):
        assert len((await kept).messages) == 1
    assert gone.cancelled()


@pytest.mark.parametrize("read_ahead", [1, 3, 1000])
async def test_pub_sub_replies_read_together_are_handed_over_whole_and_in_order(
        make_redis: MakeRedis, monkeypatch: pytest.MonkeyPatch, read_ahead: int) -> None:
    """The listener takes what was read in batches of at most READ_AHEAD: none is lost or
    reordered at a batch's edge, and a subscription confirmed amid messages completes."""
    monkeypatch.setattr(redis_backend, "READ_AHEAD", read_ahead)
    backend = make_redis()
    seen: list[tuple[str, int | None]] = []
    all_seen = asyncio.Event()

    def deliver(message: Message) -> None:
        seen.append((message.channel, message.seq))
        if len(seen) == 100:
            all_seen.set()

    await backend.start(deliver)
    await backend.subscribe("room:a")
    async with asyncio.timeout(20):
        published = await asyncio.gather(
            *(backend.publish("room:a", '{"type":"chat","text":"x"}') for _ in range(50)),
            backend.subscribe("room:b"))
        more = await asyncio.gather(
            *(backend.publish(f"room:{'ab'[i % 2]}", '{"type":"chat","text":"y"}') for i in range(50)))
        await all_seen.wait()
    expected = [(m.channel, m.seq) for m in [*published[:50], *more]]
    assert seen == sorted(expected, key=lambda pair: pair[1] or 0)
