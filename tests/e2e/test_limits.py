"""Limits and origins (API.md: Limits and bad input): size, rate, connections, rooms, Origin, CORS."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import LiveServer, ServerFactory
from tests.e2e.clients import recv_json, recv_until, sse_connect, ws_connect


async def test_websocket_frame_over_max_message_bytes_closes_1009(server_factory: ServerFactory) -> None:
    server = await server_factory({"MAX_MESSAGE_BYTES": "1024"})
    token = server.token("alice")
    async with ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send(json.dumps({"type": "chat", "text": "x" * 2000}))
        async with asyncio.timeout(5):
            await ws.wait_closed()
        assert ws.close_code == 1009


async def test_post_over_max_message_bytes_is_413(server_factory: ServerFactory) -> None:
    server = await server_factory({"MAX_MESSAGE_BYTES": "1024"})
    async with server.http() as client:
        reply = await client.post("/api/rooms/lobby/messages", content=b"x" * 2000,
                                  headers={"Authorization": f"Bearer {server.token('alice')}",
                                           "Content-Type": "text/plain"})
    assert reply.status_code == 413
    assert reply.json()["error"] == "too_large"


async def test_chat_rate_limit_is_shared_by_websocket_and_post(server_factory: ServerFactory) -> None:
    server = await server_factory({"RATE_LIMIT_BURST": "2", "RATE_LIMIT_PER_SECOND": "0.01"})
    token = server.token("alice")
    auth = {"Authorization": f"Bearer {token}"}
    async with server.http() as client, \
            ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={token}") as ws, \
            ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={server.token('bob')}") as other:
        assert (await recv_json(ws))["type"] == "welcome"
        assert (await recv_json(other))["type"] == "welcome"
        first = await client.post("/api/rooms/lobby/messages", content=b"one", headers=auth)
        assert first.status_code == 202
        await ws.send(json.dumps({"type": "chat", "text": "two", "ref": "2"}))
        assert (await recv_until(ws, "ack"))["ref"] == "2"
        await ws.send(json.dumps({"type": "chat", "text": "three", "ref": "3"}))
        error = await recv_until(ws, "error")
        assert error["code"] == "rate_limited" and error["detail"]
        refused = await client.post("/api/rooms/lobby/messages", content=b"four", headers=auth)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"] == "rate_limited"
        # The other subscriber got exactly the two accepted messages.
        texts = [(await recv_until(other, "chat"))["text"] for _ in range(2)]
        assert texts == ["one", "two"]
        history = (await client.get("/api/rooms/lobby/messages", headers=auth)).json()["messages"]
        assert [m["text"] for m in history] == ["one", "two"]


async def test_connections_per_user_over_limit_are_refused_429(server_factory: ServerFactory) -> None:
    server = await server_factory({"MAX_CONNECTIONS_PER_USER": "2"})
    token = server.token("alice")
    url = f"{server.ws_url}/ws/chat?room=lobby&token={token}"
    async with server.http() as client, ws_connect(url) as first, \
            sse_connect(client, f"/sse/chat?room=lobby&token={token}") as second:
        assert (await recv_json(first))["type"] == "welcome"
        assert (await second.next_json())["type"] == "welcome"
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(url):
                pass
        assert refused.value.response.status_code == 429
        reply = await client.get(f"/sse/notifications?token={token}")
        assert reply.status_code == 429
        # The limit counts users, not the server: someone else still gets in.
        async with ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={server.token('bob')}") as bob:
            assert (await recv_json(bob))["type"] == "welcome"
        # Over the limit after a first-frame auth: close 4429.
        async with ws_connect(f"{server.ws_url}/ws/chat?room=lobby") as late:
            await late.send(json.dumps({"type": "auth", "token": token}))
            async with asyncio.timeout(5):
                await late.wait_closed()
            assert late.close_code == 4429


async def test_invalid_room_is_refused_400(server_factory: ServerFactory) -> None:
    server = await server_factory()
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(f"{server.ws_url}/ws/chat?room=bad%20room&token={server.token('a')}"):
            pass
    assert refused.value.response.status_code == 400
    async with server.http() as client:
        reply = await client.post("/api/rooms/" + "x" * 65 + "/messages", content=b"hi",
                                  headers={"Authorization": f"Bearer {server.token('a')}"})
        assert reply.status_code == 400 and reply.json()["error"] == "bad_request"


async def test_wrong_content_type_is_415(server_factory: ServerFactory) -> None:
    server = await server_factory()
    async with server.http() as client:
        reply = await client.post("/api/rooms/lobby/messages", content=b"<a/>",
                                  headers={"Authorization": f"Bearer {server.token('a')}",
                                           "Content-Type": "application/xml"})
    assert reply.status_code == 415
    assert reply.json()["error"] == "unsupported_media_type"


async def test_rooms_claim_restricts_rooms_403(server_factory: ServerFactory) -> None:
    server = await server_factory()
    token = server.token("alice", rooms=["team-*"])
    async with server.http() as client:
        allowed = await client.post("/api/rooms/team-a/messages", content=b"hi",
                                    headers={"Authorization": f"Bearer {token}"})
        refused = await client.post("/api/rooms/lobby/messages", content=b"hi",
                                    headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 202
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    with pytest.raises(InvalidStatus) as closed:
        async with ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={token}"):
            pass
    assert closed.value.response.status_code == 403


async def test_disallowed_origin_is_refused_403(server_factory: ServerFactory) -> None:
    server = await server_factory()
    token = server.token("alice")
    url = f"{server.ws_url}/ws/chat?room=lobby&token={token}"
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(url, origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    async with ws_connect(url, origin=f"http://127.0.0.1:{server.port}") as same:  # type: ignore[arg-type]
        assert (await recv_json(same))["type"] == "welcome"
    async with server.http() as client:
        sse = await client.get(f"/sse/chat?room=lobby&token={token}", headers={"Origin": "https://evil.example"})
        assert sse.status_code == 403


async def test_allowed_origins_get_cors_headers_and_preflight(server_factory: ServerFactory) -> None:
    server = await server_factory({"ALLOWED_ORIGINS": "https://app.example"})
    async with server.http() as client:
        preflight = await client.options("/api/rooms/lobby/messages", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"})
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
        allowed = preflight.headers["Access-Control-Allow-Headers"].split(", ")
        assert {"Authorization", "Content-Type", "Idempotency-Key"} <= set(allowed)  # what hubbub.js sends
        post = await client.post("/api/rooms/lobby/messages", content=b"hi", headers={
            "Origin": "https://app.example", "Authorization": f"Bearer {server.token('a')}"})
        assert post.status_code == 202
        assert post.headers["Access-Control-Allow-Origin"] == "https://app.example"
        other = await client.post("/api/rooms/lobby/messages", content=b"hi", headers={
            "Origin": "https://evil.example", "Authorization": f"Bearer {server.token('a')}"})
        assert "Access-Control-Allow-Origin" not in other.headers


async def test_sse_cross_origin_preflight_and_stream_get_cors_headers(server_factory: ServerFactory) -> None:
    server = await server_factory({"ALLOWED_ORIGINS": "https://app.example"})
    origin = {"Origin": "https://app.example"}
    async with server.http() as client:
        preflight = await client.options("/sse/chat?room=lobby", headers={
            **origin, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, last-event-id"})
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "Last-Event-ID" in preflight.headers["Access-Control-Allow-Headers"]
        refused = await client.get("/sse/chat?room=lobby", headers=origin)  # no token
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthorized"
        assert refused.headers["Access-Control-Allow-Origin"] == "https://app.example"
        token = server.token("a")
        async with client.stream("GET", f"/sse/chat?room=lobby&token={token}", headers=origin) as sse:
            assert sse.status_code == 200
            assert sse.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert sse.headers["Content-Type"].startswith("text/event-stream")


async def test_live_endpoints_answer_other_methods_with_json_errors(live_server: LiveServer) -> None:
    async with live_server.http() as client:
        post = await client.post("/sse/chat?room=lobby", content=b"x")
        assert post.status_code == 405
        assert post.json()["error"] == "method_not_allowed"
        assert "GET" in post.headers["Allow"]
        plain = await client.get("/ws/chat?room=lobby")  # no Upgrade
        assert plain.status_code == 400
        assert plain.json()["error"] == "bad_request"
        assert "WebSocket" in plain.json()["detail"]
