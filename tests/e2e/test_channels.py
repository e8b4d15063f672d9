"""Many channels on one connection: /ws?channels=… and /sse?channels=…, one cursor for the set,
subscribe/unsubscribe frames, presence and the rooms claim, on memory and on Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.conftest import LiveServer, ServerFactory
from tests.e2e.clients import (
    bearer,
    body_json,
    recv_json,
    recv_until,
    sse_connect,
    ws_connect,
    ws_rejected,
)

Frame = dict[str, Any]
NextFrame = Callable[[], Awaitable[Frame]]
REDIS_URL = "redis://127.0.0.1:6379/0"
SET = "room:lobby,room:ops,notifications"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def server(request: pytest.FixtureRequest, server_factory: ServerFactory,
                 redis_prefix: str) -> LiveServer:
    env = {"REDIS_URL": REDIS_URL, "REDIS_PREFIX": redis_prefix} if request.param == "redis" else {}
    return await server_factory(env)


@asynccontextmanager
async def stream(server: LiveServer, transport: str, channels: str = SET, cursor: str | None = None,
                 user: str = "bob") -> AsyncIterator[NextFrame]:
    """A multi-channel connection; yields a function returning the next frame that is not presence."""
    since = "" if cursor is None else f"&since={cursor}" if transport == "ws" else f"&last_event_id={cursor}"
    token = server.token(user)

    async def skip_presence(next_frame: NextFrame) -> Frame:
        while (frame := await next_frame())["type"] in ("join", "leave"):
            pass
        return frame

    if transport == "ws":
        async with ws_connect(f"{server.ws_url}/ws?channels={channels}&token={token}{since}") as ws:
            yield lambda: skip_presence(lambda: recv_json(ws))
        return
    async with server.http() as client, sse_connect(client, f"/sse?channels={channels}{since}",
                                                    headers=bearer(token)) as sse:
        yield lambda: skip_presence(sse.next_json)


async def publish_mixed(server: LiveServer) -> list[tuple[str, str]]:
    """Interleaved messages to every channel of SET and one outside it: (channel, id) of those inside."""
    hub, sent = server.hub, []
    for i in range(3):
        for channel, message in [
            ("room:lobby", {"type": "chat", "text": f"lobby {i}"}),
            ("room:elsewhere", {"type": "chat", "text": f"not for bob {i}"}),
            ("room:ops", {"type": "chat", "text": f"ops {i}"}),
            ("user:bob", {"type": "notification", "data": {"n": i}}),
            ("user:alice", {"type": "notification", "data": {"not": "bob"}}),
            ("broadcast", {"type": "notification", "data": {"all": i}}),
        ]:
            published = await hub.publish(channel, message, sender="bot")
            if channel != "room:elsewhere" and channel != "user:alice":
                sent.append((channel, str(published.id)))
    return sent


def seq(message_id: str) -> int:
    return int(message_id.rpartition("-")[2])


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_one_connection_carries_rooms_and_notifications_in_id_order(
        server: LiveServer, transport: str) -> None:
    async with stream(server, transport) as next_frame:
        welcome = await next_frame()
        assert welcome["type"] == "welcome"
        assert welcome["channels"] == ["room:lobby", "room:ops", "notifications"]
        assert welcome["user"] == "bob" and "channel" not in welcome
        sent = await publish_mixed(server)
        received = [await next_frame() for _ in sent]
        assert [(m["channel"], m["id"]) for m in received] == sent
        ids = [seq(m["id"]) for m in received]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_one_cursor_resumes_every_channel_with_no_gap_and_no_repeat(
        server: LiveServer, transport: str) -> None:
    sent = await publish_mixed(server)
    cursor = sent[4][1]
    async with stream(server, transport, cursor=cursor) as next_frame:
        welcome = await next_frame()
        assert welcome["recovered"] is True
        # A publish racing the replay lands after it, once.
        live = await server.hub.publish("room:ops", {"type": "chat", "text": "live"}, sender="bot")
        expected = [*sent[5:], ("room:ops", str(live.id))]
        received = [await next_frame() for _ in expected]
        assert [(m["channel"], m["id"]) for m in received] == expected
        after = await server.hub.publish("broadcast", {"type": "notification", "data": "after"})
        assert (await next_frame())["id"] == after.id  # nothing repeated before it


async def test_websocket_subscribe_and_unsubscribe_change_the_set_live(server: LiveServer) -> None:
    token = server.token("bob")
    async with ws_connect(f"{server.ws_url}/ws?channels=room:lobby&token={token}") as ws:
        assert (await recv_json(ws))["channels"] == ["room:lobby"]
        await ws.send(json.dumps({"type": "subscribe", "channel": "room:ops", "ref": "s1"}))
        reply = await recv_until(ws, "subscribed")
        assert reply == {"type": "subscribed", "channel": "room:ops", "ref": "s1"}
        ops = await server.hub.publish("room:ops", {"type": "chat", "text": "now yours"}, sender="bot")
        assert (await recv_until(ws, "chat"))["id"] == ops.id

        await ws.send(json.dumps({"type": "subscribe", "channel": "notifications"}))
        assert (await recv_until(ws, "subscribed"))["channel"] == "notifications"
        note = await server.hub.notify("bob", {"hello": 1})
        assert (await recv_until(ws, "notification"))["id"] == note.id

        await ws.send(json.dumps({"type": "unsubscribe", "channel": "room:ops", "ref": "u1"}))
        reply = await recv_until(ws, "unsubscribed")
        assert reply == {"type": "unsubscribed", "channel": "room:ops", "ref": "u1"}
        await server.hub.publish("room:ops", {"type": "chat", "text": "no longer"}, sender="bot")
        lobby = await server.hub.publish("room:lobby", {"type": "chat", "text": "still"}, sender="bot")
        assert (await recv_until(ws, "chat"))["id"] == lobby.id  # the ops message never came


async def test_chat_names_its_room_and_presence_covers_every_room(server: LiveServer) -> None:
    token = server.token("bob")
    async with (ws_connect(f"{server.ws_url}/ws/chat?room=ops&token={server.token('carol')}") as carol,
                ws_connect(f"{server.ws_url}/ws?channels=room:lobby,room:ops&token={token}") as bob):
        await recv_until(carol, "welcome")
        await recv_until(bob, "welcome")
        while (await recv_until(carol, "join"))["sender"] != "bob":
            pass  # carol's own join first

        async def members(room: str) -> list[str]:
            return [m["id"] for m in await server.hub.presence(f"room:{room}")]

        assert "bob" in await members("lobby")  # joined before ops, whose join carol saw

        await bob.send(json.dumps({"type": "chat", "channel": "room:ops", "text": "hi ops", "ref": "c1"}))
        ack = await recv_until(bob, "ack")
        assert ack["ref"] == "c1"
        message = await recv_until(carol, "chat")
        assert (message["id"], message["text"], message["sender"]) == (ack["id"], "hi ops", "bob")

        await bob.send(json.dumps({"type": "chat", "text": "which room?", "ref": "c2"}))
        error = await recv_until(bob, "error")
        assert (error["code"], error["ref"]) == ("bad_request", "c2")
        await bob.send(json.dumps({"type": "chat", "channel": "room:other", "text": "x", "ref": "c3"}))
        error = await recv_until(bob, "error")
        assert (error["code"], error["ref"]) == ("bad_request", "c3") and "subscribe" in error["detail"]

        await bob.send(json.dumps({"type": "unsubscribe", "channel": "room:ops"}))
        assert (await recv_until(carol, "leave"))["sender"] == "bob"
        assert "bob" in await members("lobby") and "bob" not in await members("ops")


async def test_the_rooms_claim_holds_for_every_channel(live_server: LiveServer) -> None:
    token = live_server.token("bob", rooms=["lobby"])
    refused = await ws_rejected(f"{live_server.ws_url}/ws?channels=room:lobby,room:ops&token={token}")
    assert refused.status_code == 403 and body_json(refused)["error"] == "forbidden"
    async with live_server.http() as client:
        reply = await client.get("/sse?channels=room:ops", headers=bearer(token))
        assert reply.status_code == 403 and reply.json()["error"] == "forbidden"
    async with ws_connect(f"{live_server.ws_url}/ws?channels=room:lobby&token={token}") as ws:
        await recv_until(ws, "welcome")
        await ws.send(json.dumps({"type": "subscribe", "channel": "room:ops", "ref": "s"}))
        error = await recv_until(ws, "error")
        assert (error["code"], error["ref"]) == ("forbidden", "s")
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv_until(ws, "pong"))["type"] == "pong"  # still open


async def test_the_first_frame_may_carry_the_token(live_server: LiveServer) -> None:
    async with ws_connect(f"{live_server.ws_url}/ws?channels=room:lobby,notifications") as ws:
        await ws.send(json.dumps({"type": "auth", "token": live_server.token("bob")}))
        welcome = await recv_until(ws, "welcome")
        assert welcome["channels"] == ["room:lobby", "notifications"]


@pytest.mark.parametrize(("channels", "detail"), [
    ("lobby", "a channel is"),
    ("room:a%20b", "a channel is"),
    ("user:alice", "a channel is"),
    ("room:a,room:b,room:c", "at most 2 channels"),
])
async def test_a_bad_channel_list_is_a_400_on_both_transports(
        server_factory: ServerFactory, channels: str, detail: str) -> None:
    server = await server_factory({"MAX_CHANNELS_PER_CONNECTION": "2"})
    token = server.token("bob")
    refused = await ws_rejected(f"{server.ws_url}/ws?channels={channels}&token={token}")
    assert refused.status_code == 400 and detail in body_json(refused)["detail"]
    async with server.http() as client:
        reply = await client.get(f"/sse?channels={channels}", headers=bearer(token))
        assert reply.status_code == 400 and detail in reply.json()["detail"]


async def test_subscribing_past_the_limit_is_refused(server_factory: ServerFactory) -> None:
    server = await server_factory({"MAX_CHANNELS_PER_CONNECTION": "2"})
    token = server.token("bob")
    async with ws_connect(f"{server.ws_url}/ws?channels=room:a,notifications&token={token}") as ws:
        await recv_until(ws, "welcome")
        await ws.send(json.dumps({"type": "subscribe", "channel": "room:b", "ref": "x"}))
        error = await recv_until(ws, "error")
        assert (error["code"], error["ref"]) == ("bad_request", "x") and "at most 2" in error["detail"]
        await ws.send(json.dumps({"type": "subscribe", "channel": "room:a", "ref": "again"}))
        assert (await recv_until(ws, "subscribed"))["ref"] == "again"  # already there: fine
        await ws.send(json.dumps({"type": "subscribe", "channel": "broadcast"}))
        assert (await recv_until(ws, "error"))["code"] == "bad_request"


@pytest.mark.redis
async def test_a_subscribe_refused_while_redis_is_down_leaves_the_set_as_it_was(
        server_factory: ServerFactory, private_redis: Any) -> None:
    server = await server_factory({"REDIS_URL": private_redis.url})
    async with ws_connect(f"{server.ws_url}/ws?channels=room:a&token={server.token('bob')}") as ws:
        await recv_until(ws, "welcome")
        # Frames are read once the connection has joined its rooms: the pong says the join
        # is done. A Redis stopped before it would fail the join and close the socket 1013.
        await ws.send(json.dumps({"type": "ping"}))
        await recv_until(ws, "pong")
        await private_redis.stop()
        await ws.send(json.dumps({"type": "subscribe", "channel": "room:b", "ref": "down"}))
        error = await recv_until(ws, "error", timeout=15)
        assert (error["code"], error["ref"]) == ("unavailable", "down")
        assert server.hub.subscriber_counts() == [("room:a", 1)]  # room:b was rolled back
        await private_redis.start()
        await ws.send(json.dumps({"type": "subscribe", "channel": "room:b", "ref": "up"}))
        assert (await recv_until(ws, "subscribed", timeout=15))["ref"] == "up"


async def test_the_log_names_a_few_channels_then_counts(live_server: LiveServer,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    names = ",".join(f"room:r{n}" for n in range(7))
    async with ws_connect(f"{live_server.ws_url}/ws?channels={names}&token={live_server.token('bob')}") as ws:
        await recv_until(ws, "welcome")
    opened = [r.getMessage() for r in caplog.records if r.getMessage().startswith("connection opened")]
    assert opened == ["connection opened: bob websocket room:r0,room:r1,room:r2,room:r3,room:r4,+2"]
