"""Notifications: to one user's every connection and nobody else's, broadcast, ids, server-side use."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import pytest

from hubbub.hub.message import Cursor
from tests.conftest import LiveServer
from tests.e2e.clients import bearer, recv_json, recv_until, sse_connect, ws_connect

Frame = dict[str, Any]
Reader = Callable[[], Awaitable[Frame]]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@asynccontextmanager
async def notification_readers(server: LiveServer, users: list[tuple[str, str]],
                               query: str = "") -> AsyncIterator[list[Reader]]:
    """One notifications subscription per (user, "ws"|"sse"), each past its welcome."""
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(server.http())
        readers: list[Reader] = []
        for user, transport in users:
            token = server.token(user)
            if transport == "ws":
                url = f"{server.ws_url}/ws/notifications?token={token}{query}"
                ws = await stack.enter_async_context(ws_connect(url))
                readers.append(partial(recv_json, ws))
            else:
                path = f"/sse/notifications?token={token}{query.replace('since=', 'last_event_id=')}"
                sse = await stack.enter_async_context(sse_connect(client, path))
                readers.append(sse.next_json)
            welcome = await readers[-1]()
            assert (welcome["type"], welcome["channel"], welcome["user"]) == (
                "welcome", f"user:{user}", user)
        yield readers


async def post_notification(server: LiveServer, body: object) -> str:
    async with server.http() as client:
        reply = await client.post("/api/notifications", json=body,
                                  headers=bearer(server.token("admin", scope="notify")))
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]  # type: ignore[no-any-return]


def seq(message_id: str) -> tuple[str, int]:
    cursor = Cursor.parse(message_id)
    assert cursor is not None
    return cursor.epoch, cursor.seq


async def test_notify_user_reaches_every_connection_of_that_user_only(live_server: LiveServer) -> None:
    users = [("bob", "ws"), ("bob", "ws"), ("bob", "sse"), ("alice", "ws"), ("alice", "sse")]
    async with notification_readers(live_server, users) as readers:
        data = {"message": "New product created", "product": {"id": 7, "tags": ["a", "ü"]}}
        message_id = await post_notification(live_server, {"user": "bob", "data": data})
        for read in readers[:3]:
            frame = await read()
            assert TIMESTAMP.fullmatch(frame.pop("timestamp"))
            assert frame == {"id": message_id, "type": "notification", "data": data,
                             "channel": "user:bob", "sender": None}
        marker = await post_notification(live_server, {"broadcast": True, "data": "marker"})
        for read in readers[3:]:  # alice's first frame after her welcome is the broadcast
            frame = await read()
            assert (frame["id"], frame["channel"], frame["data"]) == (marker, "broadcast", "marker")


async def test_broadcast_reaches_every_notifications_subscriber_not_rooms(live_server: LiveServer) -> None:
    users = [("alice", "ws"), ("bob", "sse"), ("carol", "ws"), ("carol", "sse")]
    token = live_server.token("dave")
    async with notification_readers(live_server, users) as readers, \
            ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as room:
        assert (await recv_json(room))["type"] == "welcome"
        message_id = await post_notification(live_server, {"broadcast": True, "data": {"v": 2}})
        for read in readers:
            frame = await read()
            assert (frame["id"], frame["type"], frame["channel"], frame["sender"], frame["data"]) == (
                message_id, "notification", "broadcast", None, {"v": 2})
        await live_server.hub.publish("room:lobby", {"type": "chat", "text": "marker"}, sender="bot")
        assert (await recv_until(room, "chat"))["text"] == "marker"  # no broadcast before it


async def test_notification_ids_increase_across_user_and_broadcast_and_resume_both(
    live_server: LiveServer,
) -> None:
    sent = []
    async with notification_readers(live_server, [("bob", "ws"), ("bob", "sse")]) as readers:
        for body in ({"user": "bob", "data": 1}, {"broadcast": True, "data": 2},
                     {"user": "alice", "data": 3}, {"broadcast": True, "data": 4},
                     {"user": "bob", "data": 5}):
            sent.append((body, await post_notification(live_server, body)))
        expected = [message_id for body, message_id in sent if body.get("user") != "alice"]
        for read in readers:
            got = [(await read())["id"] for _ in expected]
            assert got == expected
            assert len({seq(i)[0] for i in got}) == 1
            assert [seq(i)[1] for i in got] == sorted({seq(i)[1] for i in got})  # strictly increasing
    # One cursor (a user message's id) resumes both channels, over WebSocket and SSE.
    async with notification_readers(live_server, [("bob", "ws"), ("bob", "sse")],
                                    query=f"&since={expected[0]}") as readers:
        later = await post_notification(live_server, {"user": "bob", "data": 6})
        for read in readers:
            assert [(await read())["data"] for _ in expected[1:]] == [2, 4, 5]
            assert (await read())["id"] == later


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_server_side_notify_broadcast_and_publish_arrive(
    live_server: LiveServer, transport: str,
) -> None:
    hub = live_server.hub
    token = live_server.token("bob")
    async with notification_readers(live_server, [("bob", transport)]) as (read,), \
            ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as room:
        assert (await recv_json(room))["type"] == "welcome"
        notified = await hub.notify("bob", {"message": "from the server"})
        broadcast = await hub.broadcast({"message": "to all"})
        frame = await read()
        assert (frame["id"], frame["channel"], frame["sender"]) == (notified.id, "user:bob", None)
        assert frame["data"] == {"message": "from the server"}
        frame = await read()
        assert (frame["id"], frame["channel"], frame["data"]) == (broadcast.id, "broadcast",
                                                                  {"message": "to all"})
        chat = await hub.publish("room:lobby", {"type": "chat", "text": "beep", "sender": "x"},
                                 sender="bot")
        frame = await recv_until(room, "chat")
        assert (frame["id"], frame["sender"], frame["text"]) == (chat.id, "bot", "beep")


@pytest.mark.parametrize("body", [
    {"data": {}}, {"user": "bob"}, {"user": "bob", "broadcast": True, "data": 1},
    {"user": "", "data": 1}, {"user": 5, "data": 1}, {"broadcast": "yes", "data": 1},
    {"user": "b" * 129, "data": 1}, [1, 2],
])
async def test_notifications_post_bad_body_400(live_server: LiveServer, body: object) -> None:
    async with live_server.http() as client:
        reply = await client.post("/api/notifications", json=body,
                                  headers=bearer(live_server.token("admin", scope="notify")))
    assert (reply.status_code, reply.json()["error"]) == (400, "bad_request")


async def test_notifications_post_unknown_type_415_malformed_or_untargeted_400(
        live_server: LiveServer) -> None:
    headers = bearer(live_server.token("admin", scope="notify"))
    async with live_server.http() as client:
        xml = await client.post("/api/notifications", content=b"<hi/>",
                                headers={**headers, "Content-Type": "application/xml"})
        broken = await client.post("/api/notifications", content=b"{nope",
                                   headers={**headers, "Content-Type": "application/json"})
        untargeted = await client.post("/api/notifications", content=b"hi", headers=headers)
    assert (xml.status_code, xml.json()["error"]) == (415, "unsupported_media_type")
    assert (broken.status_code, broken.json()["error"]) == (400, "bad_request")
    assert (untargeted.status_code, untargeted.json()["error"]) == (400, "bad_request")
    assert "?user=ID" in untargeted.json()["detail"]  # a plain body names its target in the URL


@pytest.mark.parametrize("target", ['"user":"bob"', '"broadcast":true'])
async def test_notifications_post_lone_surrogate_400_and_subscribers_unharmed(
    live_server: LiveServer, target: str,
) -> None:
    """JSON may spell "\\ud800"; UTF-8 cannot: delivered, it would break every subscriber's socket."""
    headers = {**bearer(live_server.token("admin", scope="notify")), "Content-Type": "application/json"}
    async with notification_readers(live_server, [("bob", "ws"), ("bob", "sse")]) as readers, \
            live_server.http() as client:
        for body in ('{%s,"data":{"x":"\\ud800"}}', '{%s,"data":{"\\udfff":1}}'):
            reply = await client.post("/api/notifications", content=(body % target).encode(), headers=headers)
            assert (reply.status_code, reply.json()["error"]) == (400, "bad_request")
        later = await post_notification(live_server, {"user": "bob", "data": "still here"})
        for read in readers:
            assert (await read())["id"] == later
