"""The lean Redis connections on the real Redis: RedisLink (commands, replies in order) and
PubSubLink (pushes read ahead into a bounded queue), each after a lost connection too."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import hubbub.hub.backends.redis_link as redis_link
from hubbub.hub.backends.redis_link import PubSubLink, RedisLink
from tests.backends.conftest import REDIS_URL, RedisServer

pytestmark = pytest.mark.redis

BUSY_FOR_A_SECOND = """local t = redis.call('TIME')
repeat local n = redis.call('TIME') until (n[1] - t[1]) * 1000000 + n[2] - t[2] > 1000000
return 1"""


async def test_the_link_sends_the_password_and_selects_the_database_of_its_url(
        private_redis: RedisServer) -> None:
    own = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        await own.config_set("requirepass", "s3cret:/@")
        authed = aioredis.Redis(port=private_redis.port, password="s3cret:/@", db=3,
                                decode_responses=True)
        link = RedisLink(f"redis://:s3cret%3A%2F%40@127.0.0.1:{private_redis.port}/3", name="hub-link")
        async with asyncio.timeout(10):
            assert await link.execute([("SET", "k", "in db 3"), ("CLIENT", "GETNAME")]) == [
                "OK", "hub-link"]
            assert await authed.get("k") == "in db 3"
            wrong = RedisLink(f"redis://:nope@127.0.0.1:{private_redis.port}/0")
            with pytest.raises(AuthenticationError):
                await wrong.execute([("PING",)])
            await authed.config_set("requirepass", "")
        link.close()
        await authed.aclose()
    finally:
        await own.aclose()


async def test_an_overdue_reply_drops_the_connection_and_the_next_batch_has_a_new_one(
        private_redis: RedisServer) -> None:
    link = RedisLink(private_redis.url, reply_timeout_s=0.3)
    own = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    async with asyncio.timeout(10):
        first = await link.execute([("CLIENT", "ID")])
        with pytest.raises(RedisTimeoutError):
            await link.execute([("EVAL", BUSY_FOR_A_SECOND, 0)])
        assert await own.ping()  # answered once the script is done
        # The late reply to the script went with the old connection: none is taken for this one.
        assert await link.execute([("ECHO", "after")]) == ["after"]
        assert await link.execute([("CLIENT", "ID")]) != first
    link.close()
    await own.aclose()


async def test_error_replies_keep_their_place_among_the_others(client: aioredis.Redis,
                                                                redis_prefix: str) -> None:
    link = RedisLink(REDIS_URL)
    await client.set(f"{redis_prefix}text", "a string")
    async with asyncio.timeout(10):
        one, two, three = await link.execute([("ECHO", "one"), ("LPUSH", f"{redis_prefix}text", "x"),
                                              ("EVALSHA", "0" * 40, 0)])
    assert one == "one"
    assert isinstance(two, ResponseError) and "WRONGTYPE" in str(two)
    assert isinstance(three, NoScriptError)
    link.close()


async def test_the_pub_sub_link_reads_every_push_in_order_and_pauses_past_its_bound(
        client: aioredis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PubSubLink, "PAUSE_AT", 10)
    pauses: list[bool] = []
    pause = redis_link._Wire.pause
    monkeypatch.setattr(redis_link._Wire, "pause", lambda wire, paused: (pauses.append(paused),
                                                                        pause(wire, paused))[1])
    link = PubSubLink(REDIS_URL, name=f"{redis_prefix}listener")
    topic = f"{redis_prefix}c:room"
    try:
        async with asyncio.timeout(10):
            await link.connect()
            link.subscribe(topic)
            assert await link.read(None, 10) == [["subscribe", topic, 1]]
            async with client.pipeline(transaction=False) as pipe:
                for n in range(1000):
                    pipe.publish(topic, f"m{n}")
                assert await pipe.execute() == [1] * 1000
            got: list[list[str]] = []
            while len(got) < 1000:
                got += await link.read(None, 7)
        assert got == [["message", topic, f"m{n}"] for n in range(1000)]
        assert True in pauses and pauses[-1] is False  # reading stopped, and went on
    finally:
        link.close()


async def test_the_pub_sub_link_hands_over_what_it_read_then_reports_the_loss(
        client: aioredis.Redis, redis_prefix: str) -> None:
    link = PubSubLink(REDIS_URL, name=f"{redis_prefix}listener")
    topic = f"{redis_prefix}c:room"
    async with asyncio.timeout(10):
        await link.connect()
        assert await link.read(0.01, 10) == []  # nothing yet: an empty read, not a wait
        link.subscribe(topic)
        assert await link.read(None, 10) == [["subscribe", topic, 1]]
        await client.publish(topic, "last words")
        (mine,) = [c["id"] for c in await client.client_list(_type="pubsub")
                   if c["name"] == f"{redis_prefix}listener"]
        await client.client_kill_filter(_id=mine)
        assert await link.read(None, 10) == [["message", topic, "last words"]]
        with pytest.raises(RedisConnectionError):
            await link.read(None, 10)
        with pytest.raises(RedisConnectionError):
            link.ping()
    link.close()
