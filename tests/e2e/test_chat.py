"""Chat over WebSocket: acks and the sender rule, stamping, join/leave, bad frames, echo, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import pytest

from tests.conftest import LiveServer, ServerFactory
from tests.e2e.clients import (
    bearer,
    body_json,
    eventually,
    recv_close,
    recv_json,
    recv_until,
    sse_connect,
    ws_connect,
    ws_rejected,
)

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def chat_url(server: LiveServer, user: str, room: str = "lobby") -> str:
    return f"{server.ws_url}/ws/chat?room={room}&token={server.token(user)}"


async def presence_of(server: LiveServer, room: str = "lobby") -> dict[str, int]:
    async with server.http() as client:
        reply = await client.get(f"/api/rooms/{room}/presence", headers=bearer(server.token("probe")))
    return {u["id"]: u["connections"] for u in reply.json()["users"]}


async def test_chat_sender_gets_ack_not_own_message_other_gets_it(live_server: LiveServer) -> None:
    async with ws_connect(chat_url(live_server, "alice")) as alice, \
            ws_connect(chat_url(live_server, "bob")) as bob:
        assert (await recv_json(alice))["type"] == "welcome"
        assert (await recv_json(bob))["type"] == "welcome"
        await alice.send(json.dumps({"type": "chat", "text": "hi bob", "ref": "r1"}))
        ack = await recv_until(alice, "ack")
        message = await recv_until(bob, "chat")
        assert ack == {"type": "ack", "id": message["id"], "ref": "r1"}
        assert message["channel"] == "room:lobby" and message["sender"] == "alice"
        assert message["text"] == "hi bob" and TIMESTAMP.fullmatch(message["timestamp"])
        # A second message from bob proves alice's stream holds no copy of her own.
        await bob.send('{"type":"chat","text":"hi alice"}')
        assert (await recv_until(bob, "ack"))["ref"] is None
        frame = await recv_until(alice, "chat")
        assert (frame["sender"], frame["text"]) == ("bob", "hi alice")


async def test_chat_client_stamped_fields_overwritten_unknown_dropped(live_server: LiveServer) -> None:
    async with ws_connect(chat_url(live_server, "alice")) as alice, \
            ws_connect(chat_url(live_server, "bob")) as bob:
        await recv_json(bob)
        await recv_json(alice)
        await alice.send(json.dumps({
            "type": "chat", "text": "forged", "id": "x-999", "channel": "room:other",
            "sender": "mallory", "timestamp": "1999-01-01T00:00:00.000Z", "admin": True,
        }))
        ack = await recv_until(alice, "ack")
        message = await recv_until(bob, "chat")
    assert set(message) == {"type", "text", "id", "channel", "sender", "timestamp"}
    assert message["id"] == ack["id"] != "x-999"
    assert (message["channel"], message["sender"]) == ("room:lobby", "alice")
    assert message["timestamp"] != "1999-01-01T00:00:00.000Z"


async def test_chat_same_users_second_connection_gets_message(live_server: LiveServer) -> None:
    async with ws_connect(chat_url(live_server, "alice")) as phone, \
            ws_connect(chat_url(live_server, "alice")) as laptop:
        await recv_json(phone)
        await recv_json(laptop)
        await phone.send('{"type":"chat","text":"from my phone","ref":"p"}')
        ack = await recv_until(phone, "ack")
        message = await recv_until(laptop, "chat")
    assert (message["id"], message["sender"], message["text"]) == (ack["id"], "alice", "from my phone")


async def test_chat_join_and_leave_once_per_user(live_server: LiveServer) -> None:
    """First connection joins, last one leaves; a marker message proves nothing came between."""
    async with live_server.http() as client, ws_connect(chat_url(live_server, "watcher")) as watcher:
        assert (await recv_json(watcher))["type"] == "welcome"
        assert await recv_json(watcher) == {"type": "join", "channel": "room:lobby", "sender": "watcher"}

        async def marker(text: str) -> None:
            reply = await client.post("/api/rooms/lobby/messages", content=text.encode(),
                                      headers=bearer(live_server.token("marker")))
            assert reply.status_code == 202
            frame = await recv_json(watcher)
            assert (frame["type"], frame["text"]) == ("chat", text)

        async with ws_connect(chat_url(live_server, "alice")) as first:
            assert await recv_json(watcher) == {"type": "join", "channel": "room:lobby", "sender": "alice"}
            await recv_json(first)
            async with ws_connect(chat_url(live_server, "alice")) as second:
                await recv_json(second)
                await second.send('{"type":"ping"}')  # its join (if any) happens before it reads
                await recv_until(second, "pong")
                await marker("after second join")
            await eventually(lambda: _has(live_server, "alice", 1))
            await marker("after second leave")
        assert await recv_json(watcher) == {"type": "leave", "channel": "room:lobby", "sender": "alice"}


async def test_chat_a_crowd_joining_at_once_is_announced_frame_by_frame(live_server: LiveServer) -> None:
    """Joins that land in one 50 ms window leave in one write; clients still see one JSON
    frame (WebSocket message, SSE event) per user, each once."""
    crowd = [f"guest{i}" for i in range(20)]
    reader_path = f"/sse/chat?room=lobby&token={live_server.token('reader')}"
    async with live_server.http() as client, ws_connect(chat_url(live_server, "watcher")) as watcher, \
            sse_connect(client, reader_path) as reader:
        assert [(await recv_json(watcher))["type"] for _ in range(2)] == ["welcome", "join"]
        assert (await reader.next_json())["type"] == "welcome"
        own = await reader.next_json()
        if own.get("sender") == "watcher":  # both joins fell in one window: it gets that one too
            own = await reader.next_json()
        assert (own["type"], own["sender"]) == ("join", "reader")
        assert (await recv_json(watcher))["sender"] == "reader"
        async with contextlib.AsyncExitStack() as stack:
            # The guests do not read each other's joins: an unbounded queue, or their client
            # would stop reading at 16 and never see the server's close frame.
            guests = await asyncio.gather(*(
                stack.enter_async_context(ws_connect(chat_url(live_server, user), max_queue=None))
                for user in crowd))
            for guest in guests:
                assert (await recv_json(guest))["type"] == "welcome"
            seen_ws = [await recv_json(watcher) for _ in crowd]
            seen_sse = [await reader.next_json() for _ in crowd]
        joins = [("join", user) for user in sorted(crowd)]
        assert sorted((f["type"], f["sender"]) for f in seen_ws) == joins
        assert sorted((f["type"], f["sender"]) for f in seen_sse) == joins
        left = [await recv_json(watcher) for _ in crowd]
        assert sorted((f["type"], f["sender"]) for f in left) == [("leave", user) for user in sorted(crowd)]


async def _has(server: LiveServer, user: str, connections: int) -> bool:
    return (await presence_of(server)).get(user) == connections


@pytest.mark.parametrize("frame", [
    "{not json", "[1, 2]", '"chat"', '{"text":"no type"}', '{"type":"shout","text":"hi"}',
    '{"type":"chat","text":""}', '{"type":"chat","text":"   "}', '{"type":"chat"}',
    '{"type":"chat","text":42}', '{"type":"chat","text":"hi","ref":7}', b"\xff\xfe",
    '{"type":"chat","text":"nul \\u0000 inside"}',
    json.dumps({"type": "chat", "text": "hi", "ref": "r" * 129}),
])
async def test_chat_bad_frame_error_bad_request_connection_stays_open(
    live_server: LiveServer, frame: str | bytes,
) -> None:
    async with ws_connect(chat_url(live_server, "alice")) as ws:
        await recv_json(ws)
        await ws.send(frame)
        error = await recv_until(ws, "error")
        assert error["code"] == "bad_request" and isinstance(error["detail"], str) and error["detail"]
        await ws.send('{"type":"chat","text":"still here"}')
        assert (await recv_until(ws, "ack"))["id"]


async def test_ws_ping_frame_gets_pong(live_server: LiveServer) -> None:
    token = live_server.token("alice")
    async with ws_connect(f"{live_server.ws_url}/ws/notifications?token={token}") as ws:
        await recv_json(ws)
        await ws.send('{"type":"ping"}')
        assert await recv_json(ws) == {"type": "pong"}


async def test_ws_notifications_refuses_chat_frame_bad_request(live_server: LiveServer) -> None:
    token = live_server.token("alice")
    async with ws_connect(f"{live_server.ws_url}/ws/notifications?token={token}") as ws:
        await recv_json(ws)
        await ws.send('{"type":"chat","text":"hi"}')
        assert (await recv_json(ws))["code"] == "bad_request"


async def test_echo_returns_text_and_binary_frames(live_server: LiveServer) -> None:
    async with ws_connect(f"{live_server.ws_url}/ws/echo") as ws:
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"


@pytest.mark.parametrize("query", ["", "room=", "room=a%20b", "room=a/b", f"room={'x' * 65}",
                                   "room=caf%C3%A9"])
async def test_chat_bad_room_name_400_before_upgrade(live_server: LiveServer, query: str) -> None:
    token = live_server.token("alice")
    response = await ws_rejected(f"{live_server.ws_url}/ws/chat?{query}&token={token}")
    assert (response.status_code, body_json(response)["error"]) == (400, "bad_request")
    async with live_server.http() as client:
        reply = await client.get(f"/sse/chat?{query}", headers=bearer(token))
    assert (reply.status_code, reply.json()["error"]) == (400, "bad_request")


async def test_chat_room_name_at_the_limits_accepted(live_server: LiveServer) -> None:
    room = "A-z_0.9" + "x" * 57
    async with ws_connect(chat_url(live_server, "alice", room)) as ws:
        assert (await recv_json(ws))["channel"] == f"room:{room}"


async def test_chat_rate_limit_shared_with_post_error_frame_not_delivered(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory({"RATE_LIMIT_BURST": "3", "RATE_LIMIT_PER_SECOND": "0.01"})
    async with server.http() as client, ws_connect(chat_url(server, "alice")) as alice, \
            ws_connect(chat_url(server, "bob")) as bob:
        await recv_json(bob)
        for text in ("one", "two"):
            reply = await client.post("/api/rooms/lobby/messages", content=text.encode(),
                                      headers=bearer(server.token("alice")))
            assert reply.status_code == 202
        await alice.send('{"type":"chat","text":"three"}')
        await alice.send('{"type":"chat","text":"four"}')
        frames = [await recv_json(alice)]
        while frames[-1]["type"] != "error":
            frames.append(await recv_json(alice))
        await bob.send('{"type":"chat","text":"marker"}')
        while frames[-1].get("text") != "marker":
            frames.append(await recv_json(alice))
    kinds = [(f["type"], f.get("text") or f.get("code")) for f in frames if f["type"] != "join"]
    assert kinds[0] == ("welcome", None)
    assert kinds[1:] == [("chat", "one"), ("chat", "two"), ("ack", None), ("error", "rate_limited"),
                         ("chat", "marker")]  # "three" is hers (acked), "four" was never sent


async def test_connections_per_user_limit_429_before_upgrade(server_factory: ServerFactory) -> None:
    server = await server_factory({"MAX_CONNECTIONS_PER_USER": "2"})
    async with server.http() as client, ws_connect(chat_url(server, "alice")) as one, \
            ws_connect(chat_url(server, "alice")) as two:
        await recv_json(one)
        await recv_json(two)
        response = await ws_rejected(chat_url(server, "alice"))
        assert response.status_code == 429
        reply = await client.get("/sse/notifications", headers=bearer(server.token("alice")))
        assert reply.status_code == 429 and reply.headers["Retry-After"]
        async with ws_connect(chat_url(server, "bob")) as other:  # a per-user limit
            assert (await recv_json(other))["type"] == "welcome"

    async def released() -> bool:  # closed connections, WebSocket and SSE, give their slots back
        return (await server_health(server))["connections"] == 0

    for _ in range(2):
        async with server.http() as client, \
                sse_connect(client, "/sse/notifications", headers=bearer(server.token("alice"))) as sse:
            assert (await sse.next_json())["type"] == "welcome"
        await eventually(released)
    async with ws_connect(chat_url(server, "alice")) as one, ws_connect(chat_url(server, "alice")) as two:
        assert (await recv_json(one))["type"] == (await recv_json(two))["type"] == "welcome"


async def server_health(server: LiveServer) -> dict[str, int]:
    async with server.http() as client:
        return (await client.get("/healthz")).json()  # type: ignore[no-any-return]


async def test_chat_frame_too_big_closes_1009(server_factory: ServerFactory) -> None:
    server = await server_factory({"MAX_MESSAGE_BYTES": "1024"})
    async with ws_connect(chat_url(server, "alice")) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "chat", "text": "x" * 2000}))
        code, _ = await recv_close(ws)
    assert code == 1009


async def test_disallowed_origin_403_before_upgrade_same_origin_allowed(live_server: LiveServer) -> None:
    token = live_server.token("alice")
    url = f"{live_server.ws_url}/ws/chat?room=lobby&token={token}"
    response = await ws_rejected(url, origin="http://evil.example")
    assert (response.status_code, body_json(response)["error"]) == (403, "forbidden")
    async with live_server.http() as client:
        reply = await client.get("/sse/notifications", headers={**bearer(token), "Origin": "http://evil.example"})
    assert reply.status_code == 403
    async with ws_connect(url, origin=live_server.url) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
