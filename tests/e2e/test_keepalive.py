"""Keep-alive, dead peers and token expiry on live connections (API.md: Keep-alive and shutdown)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

import pytest

from tests.conftest import ServerFactory
from tests.e2e.clients import recv_json, recv_until, sse_connect, ws_connect

FAST_HEARTBEAT = {"HEARTBEAT_INTERVAL": "0.2", "IDLE_TIMEOUT": "1"}


async def test_silent_websocket_peer_is_closed_after_idle_timeout(server_factory: ServerFactory) -> None:
    server = await server_factory(FAST_HEARTBEAT)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws/chat?room=lobby&token={server.token('ghost')} HTTP/1.1\r\n"
                  f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    received = b""
    try:
        async with asyncio.timeout(5):  # idle timeout 1 s + close grace; never answers a ping
            while chunk := await reader.read(65536):
                received += chunk
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 101")
    assert b"\x89" in received  # at least one protocol ping (opcode 0x9) came first


async def test_websocket_peer_answering_pings_outlives_idle_timeout(server_factory: ServerFactory) -> None:
    server = await server_factory(FAST_HEARTBEAT)
    token = server.token("alive")
    async with ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.5):  # 2.5 × the idle timeout, answering pings only
                await ws.wait_closed()
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv_until(ws, "pong")) == {"type": "pong"}


async def test_sse_sends_heartbeat_comments(server_factory: ServerFactory) -> None:
    server = await server_factory(FAST_HEARTBEAT)
    async with server.http() as client, \
            sse_connect(client, f"/sse/notifications?token={server.token('alice')}") as sse:
        assert (await sse.next_json())["type"] == "welcome"
        with pytest.raises(TimeoutError):
            await sse.next(timeout=1.0)
        assert sse.comments >= 3  # the first flush, then one every 0.2 s


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
async def test_sse_heartbeat_is_a_ping_event_when_asked(server_factory: ServerFactory, http2: bool) -> None:
    # ?heartbeat=1: a data event EventSource shows the page (comments it hides), without an
    # id, so the cursor stays; over HTTP/2 it goes through the server rather than the socket.
    server = await server_factory(FAST_HEARTBEAT)
    path = f"/sse/chat?room=lobby&heartbeat=1&token={server.token('alice')}"
    async with server.http(http1=not http2, http2=http2) as client, sse_connect(client, path) as sse:
        assert sse.response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert (await sse.next_json())["type"] == "welcome"
        assert (await sse.next_json())["type"] == "join"  # her own
        pings = [await sse.next(timeout=2.0) for _ in range(3)]
        comments = sse.comments
        reply = await client.post("/api/rooms/lobby/messages", content=b"between beats",
                                  headers={"Authorization": f"Bearer {server.token('bob')}"})
        chat = await sse.until("chat")
    assert all(p is not None and json.loads(p.data) == {"type": "ping"} and not p.id for p in pings), pings
    assert comments == 1  # only the first flush: every later heartbeat was a ping event
    assert chat["id"] == reply.json()["id"]


async def test_sse_stream_outlives_quart_response_timeout(server_factory: ServerFactory) -> None:
    server = await server_factory(FAST_HEARTBEAT, app_config={"RESPONSE_TIMEOUT": 1})
    token = server.token("alice")
    async with server.http() as client, sse_connect(client, f"/sse/chat?room=lobby&token={token}") as sse:
        assert (await sse.next_json())["type"] == "welcome"
        with pytest.raises(TimeoutError):  # an ended stream would fail with AssertionError
            await sse.until("nothing-comes", timeout=2.0)  # past the 1 s response timeout
        reply = await client.post("/api/rooms/lobby/messages", content=b"still here",
                                  headers={"Authorization": f"Bearer {token}"})
        assert (await sse.until("chat"))["id"] == reply.json()["id"]


async def test_token_expiry_closes_websocket_4401_and_ends_sse(server_factory: ServerFactory) -> None:
    server = await server_factory()
    token = server.token("brief", ttl_s=1.5)
    async with server.http() as client, \
            ws_connect(f"{server.ws_url}/ws/notifications?token={token}") as ws, \
            sse_connect(client, f"/sse/notifications?token={token}") as sse:
        assert (await recv_json(ws))["type"] == "welcome"
        assert (await sse.next_json())["type"] == "welcome"
        async with asyncio.timeout(5):
            await ws.wait_closed()
        assert ws.close_code == 4401
        assert await sse.next() is None


async def test_half_open_handshake_does_not_block_others(server_factory: ServerFactory) -> None:
    server = await server_factory()
    half = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        half.sendall(b"GET /ws/chat?room=lobby HTTP/1.1\r\nHost: x\r\nUpgrade: websock")
        token = server.token("alice")
        async with ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={token}") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
    finally:
        half.close()


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status, *lines = head.rstrip(b"\r\n").split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines)}
    return status, headers, await reader.readexactly(int(headers[b"content-length"]))


def _post_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer garbage\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


async def test_a_post_refused_before_its_body_came_keeps_its_connection(
        server_factory: ServerFactory) -> None:
    """A refusal is decided on the headers; the body may still be on its way (it often is a
    segment of its own). The connection must still serve the next request: Hypercorn closes
    one whose request was not read whole, and a keep-alive client would lose its next one."""
    server = await server_factory()
    body = b'{"text":"hello"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        async with asyncio.timeout(10):
            writer.write(_post_head("/api/rooms/lobby/messages", len(body)))
            await writer.drain()
            await asyncio.sleep(0.2)  # a slow client: the headers are handled before the body comes
            writer.write(body)
            status, headers, reply = await _response(reader)
            assert status == b"HTTP/1.1 401 " and json.loads(reply)["error"] == "unauthorized"
            assert headers.get(b"connection") != b"close"
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, _, _ = await _response(reader)
            assert status.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_a_post_refused_whose_body_never_comes_says_the_connection_closes(
        server_factory: ServerFactory) -> None:
    server = await server_factory()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        async with asyncio.timeout(10):
            writer.write(_post_head("/api/rooms/lobby/messages", 100))  # and never the 100 bytes
            await writer.drain()
            status, headers, _ = await _response(reader)
            assert status == b"HTTP/1.1 401 "
            assert headers[b"connection"] == b"close"
            assert await reader.read() == b""  # and the server closes it
    finally:
        writer.close()
