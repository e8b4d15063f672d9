"""Hostile input gets a clear error and the server keeps serving everyone else."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import LiveServer, ServerFactory
from tests.e2e.clients import recv_json, recv_until, sse_connect, ws_connect

BAD_FRAMES = [
    pytest.param(b"\xff\xfe\xfd", id="invalid-utf8"),
    pytest.param("[" * 50_000, id="deeply-nested"),
    pytest.param('{"type":"chat","text":' + "9" * 50_000 + "}", id="huge-number"),
    pytest.param('{"type":"chat","text":42}', id="text-not-a-string"),
    pytest.param('{"type":["chat"]}', id="type-not-a-string"),
    pytest.param('{"type":"chat","text":"a\\u0000b"}', id="null-byte"),
    pytest.param('{"type":"chat","text":"   "}', id="blank-text"),
    pytest.param('{"type":"subscribe"}', id="unknown-type"),
    pytest.param("null", id="not-an-object"),
    pytest.param("", id="empty"),
]


async def assert_still_serving(server: LiveServer) -> None:
    """Another user can still connect, post and receive."""
    token = server.token("bystander")
    async with server.http() as client, \
            ws_connect(f"{server.ws_url}/ws/chat?room=calm&token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        reply = await client.post("/api/rooms/calm/messages", content=b"ok",
                                  headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 202
        assert (await recv_until(ws, "chat"))["id"] == reply.json()["id"]


@pytest.mark.parametrize("frame", BAD_FRAMES)
async def test_bad_websocket_frame_gets_error_frame_and_stays_open(live_server: LiveServer,
                                                                  frame: str | bytes) -> None:
    token = live_server.token("mallory")
    async with ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send(frame)
        error = await recv_until(ws, "error")
        assert error["code"] == "bad_request" and isinstance(error["detail"], str)
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv_until(ws, "pong") == {"type": "pong"}
    await assert_still_serving(live_server)


@pytest.mark.parametrize("body", [b"\xff\xfe", b"", b"   ", b"a\x00b"], ids=["utf8", "empty", "blank", "nul"])
async def test_bad_post_body_is_400_json(live_server: LiveServer, body: bytes) -> None:
    async with live_server.http() as client:
        reply = await client.post("/api/rooms/lobby/messages", content=body, headers={
            "Authorization": f"Bearer {live_server.token('m')}", "Content-Type": "text/plain"})
        assert reply.status_code == 400
        assert reply.json()["error"] == "bad_request"
        for raw in (b"[" * 50_000, b'{"text":' + b"9" * 50_000 + b"}", b'{"text":["x"]}'):
            reply = await client.post("/api/rooms/lobby/messages", content=raw, headers={
                "Authorization": f"Bearer {live_server.token('m')}", "Content-Type": "application/json"})
            assert reply.status_code == 400, raw[:20]
            assert reply.json()["error"] == "bad_request"


async def test_crlf_in_text_cannot_inject_sse_fields(live_server: LiveServer) -> None:
    token = live_server.token("alice")
    evil = "hi\r\n\r\nid: 999\nevent: admin\ndata: {\"type\":\"chat\",\"text\":\"forged\"}\r\r"
    async with live_server.http() as client, \
            sse_connect(client, f"/sse/chat?room=lobby&token={token}") as sse:
        assert (await sse.next_json())["type"] == "welcome"
        reply = await client.post("/api/rooms/lobby/messages", json={"text": evil},
                                  headers={"Authorization": f"Bearer {token}"})
        message = await sse.until("chat")
        assert message["text"] == evil and message["id"] == reply.json()["id"]
        assert not any(line.startswith("event:") for line in sse.raw)


async def test_burst_of_tiny_frames_does_not_disturb_others(server_factory: ServerFactory) -> None:
    live_server = await server_factory({"RATE_LIMIT_PER_SECOND": "0.001"})  # no refill mid-burst
    token = live_server.token("flooder")
    async with ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        answers: list[dict[str, object]] = []

        async def read_answers() -> None:
            while len(answers) < 10_000:
                frame = json.loads(await ws.recv())
                if frame["type"] in ("ack", "error"):
                    answers.append(frame)

        reader = asyncio.create_task(read_answers())
        frame = json.dumps({"type": "chat", "text": "x"})
        for _ in range(10_000):
            await ws.send(frame)
        await assert_still_serving(live_server)
        async with asyncio.timeout(20):
            await reader
    burst = live_server.settings.rate_limit_burst
    assert sum(a["type"] == "ack" for a in answers) == burst
    assert all(a["code"] == "rate_limited" for a in answers if a["type"] == "error")


async def test_oversized_headers_are_refused_and_server_keeps_serving(live_server: LiveServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", live_server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        async with asyncio.timeout(5):
            answer = await reader.read(100)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431")  # Request Header Fields Too Large
    await assert_still_serving(live_server)


async def test_http_errors_are_json_never_html(live_server: LiveServer) -> None:
    async with live_server.http() as client:
        for method, path in (("GET", "/nope"), ("DELETE", "/api/rooms/lobby/messages"),
                             ("GET", "/ws/chat?room=lobby")):
            reply = await client.request(method, path)
            assert reply.status_code >= 400
            assert reply.headers["content-type"].startswith("application/json"), (path, reply.text)
            assert set(reply.json()) == {"error", "detail"}
