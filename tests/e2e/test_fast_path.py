"""The fast path's contract with Hypercorn: on HTTP/1.1 every live WebSocket and SSE
connection writes straight to its socket. It rests on private names of Hypercorn
(app/transports/hypercorn_bridge.py), so this fails the day a release moves one, rather
than letting the fast path switch itself off in silence.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from hubbub.transports import asgi, hypercorn_bridge
from hubbub.transports.live import LiveConnection
from hubbub.transports.pong_filter import PongFilter
from tests.conftest import LiveServer, run_server
from tests.e2e.clients import recv_json, recv_until, sse_connect, ws_connect

T = TypeVar("T")


def test_fast_path_available_with_the_pinned_hypercorn() -> None:
    fast, why = hypercorn_bridge.status()
    assert fast, why


def test_the_fast_path_is_off_when_h11_moves_what_the_bridge_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    import h11

    monkeypatch.delattr(h11.Connection, "_process_event")
    hypercorn_bridge.status.cache_clear()
    try:
        fast, why = hypercorn_bridge.status()
    finally:
        hypercorn_bridge.status.cache_clear()
    assert not fast and "h11" in why and "_process_event" in why


def test_the_fast_path_is_off_when_hypercorn_moves_its_websocket_accept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from hypercorn.protocol.ws_stream import Handshake

    monkeypatch.delattr(Handshake, "accept")
    hypercorn_bridge.status.cache_clear()
    try:
        fast, why = hypercorn_bridge.status()
    finally:
        hypercorn_bridge.status.cache_clear()
    assert not fast and "Handshake.accept" in why


async def test_every_live_connection_on_http11_writes_directly(live_server: LiveServer) -> None:
    token = live_server.token("alice")
    async with live_server.http() as client, \
            ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as chat, \
            ws_connect(f"{live_server.ws_url}/ws/notifications?token={token}") as inbox, \
            ws_connect(f"{live_server.ws_url}/ws/echo") as echo, \
            sse_connect(client, f"/sse/chat?room=lobby&token={token}") as sse:
        assert (await recv_json(chat))["type"] == (await recv_json(inbox))["type"] == "welcome"
        assert (await sse.next_json())["type"] == "welcome"
        await echo.send("x")
        async with asyncio.timeout(5):
            assert await echo.recv() == "x"
        assert "hubbub_fast_path 1.0" in (await client.get("/metrics")).text
        subscriptions = live_server.hub._subscriptions
        assert len(subscriptions) == 4
        # write_now is the direct writer's: set only when the bridge reached the socket
        assert all(sub.write_now is not None for sub in subscriptions)


async def test_a_pong_is_noted_before_hypercorn_reads_it(live_server: LiveServer) -> None:
    token = live_server.token("alice")
    async with ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        [subscription] = live_server.hub._subscriptions
        connection = subscription.listener
        assert isinstance(connection, LiveConnection) and connection.bridge is not None
        bridge = connection.bridge
        stream, watched = bridge._stream, bridge._stream.handle
        reached: list[str] = []

        async def recording(event: object) -> None:
            reached.append(type(event).__name__)
            await watched(event)

        stream.handle = recording
        assert bridge._writer is not None
        reader = bridge._writer._reader  # type: ignore[attr-defined]  # the connection's StreamReader
        pong_filter = reader.feed_data
        assert isinstance(pong_filter, PongFilter)
        fed = asyncio.Event()

        def feeding(data: bytes) -> None:
            pong_filter(data)
            fed.set()

        reader.feed_data = feeding
        before = bridge.last_received
        await ws.pong()  # empty and unsolicited: what a client's answer to our ping is on the wire
        async with asyncio.timeout(5):
            await fed.wait()
        assert bridge.last_received > before
        assert reached == []  # noted by the pong filter: Hypercorn's stream never saw it
        await ws.send('{"type":"ping"}')
        assert (await recv_until(ws, "pong"))["type"] == "pong"
        assert reached == ["Data"]  # every other frame goes through Hypercorn as before


async def test_outside_the_tested_range_starts_with_a_warning_and_the_plain_path(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(hypercorn_bridge, "TESTED_HYPERCORN", ((0, 99),))
    hypercorn_bridge.status.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="hubbub"):
            async with run_server() as server:
                token = server.token("alice")
                async with ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={token}") as ws:
                    assert (await recv_json(ws))["type"] == "welcome"
                    await server.hub.publish("room:lobby", {"type": "chat", "text": "hi"}, sender="b")
                    assert (await recv_until(ws, "chat"))["text"] == "hi"  # through plain ASGI
                    assert all(sub.write_now is None for sub in server.hub._subscriptions)
    finally:
        hypercorn_bridge.status.cache_clear()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("fast path off" in w and "outside the tested range" in w for w in warnings), warnings


async def _head_and_welcome(port: int, request: str) -> tuple[bytes, bytes]:
    """A raw request: the response head, and what followed it up to the welcome."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request.encode())
        received = b""
        async with asyncio.timeout(5):
            while b'"welcome"' not in received:
                chunk = await reader.read(65536)
                assert chunk, received
                received += chunk
    finally:
        writer.close()
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


async def _sse_head(port: int, token: str) -> tuple[bytes, bytes]:
    """A raw GET of /sse/chat."""
    return await _head_and_welcome(
        port, f"GET /sse/chat?room=lobby&token={token} HTTP/1.1\r\nHost: x\r\n\r\n")


async def _with_the_fast_path_off(monkeypatch: pytest.MonkeyPatch,
                                  fetch: Callable[[int, str], Awaitable[T]]) -> T:
    """What ``fetch(port, token)`` reads from a server of its own with the fast path off."""
    monkeypatch.setattr(hypercorn_bridge, "TESTED_HYPERCORN", ((0, 99),))
    hypercorn_bridge.status.cache_clear()
    try:
        async with run_server() as plain_server:
            return await fetch(plain_server.port, plain_server.token("alice"))
    finally:
        hypercorn_bridge.status.cache_clear()


def _without_date(head: bytes) -> bytes:
    return b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"date: "))


async def test_an_sse_head_written_directly_is_the_one_hypercorn_writes(
        live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    heads: list[bytes | None] = []
    start_chunked = hypercorn_bridge.Bridge.start_chunked

    def recording(bridge: hypercorn_bridge.Bridge, status: int, block: bytes) -> bytes | None:
        heads.append(start_chunked(bridge, status, block))
        return heads[-1]

    monkeypatch.setattr(hypercorn_bridge.Bridge, "start_chunked", recording)
    direct, first_chunk = await _sse_head(live_server.port, live_server.token("alice"))
    assert len(heads) == 1 and heads[0] is not None and heads[0].startswith(direct)
    plain, _ = await _with_the_fast_path_off(monkeypatch, _sse_head)
    assert direct.startswith(b"HTTP/1.1 200 \r\n") and b"\r\ndate: " in direct
    assert _without_date(direct) == _without_date(plain)
    assert direct.endswith(b"Transfer-Encoding: chunked")
    assert b"event: welcome" not in first_chunk and b'"type":"welcome"' in first_chunk


async def test_an_sse_stream_with_a_direct_head_ends_through_hypercorn_on_a_reusable_connection(
        live_server: LiveServer) -> None:
    """The head is written past h11, so h11 must still know it went: the ending's last
    chunk is h11's, and the connection then serves the next request."""
    token = live_server.token("brief", ttl_s=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", live_server.port)
    try:
        writer.write(f"GET /sse/notifications?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        async with asyncio.timeout(5):  # the token expires after 1 s: the stream ends
            while not received.endswith(b"\r\n0\r\n\r\n"):
                chunk = await reader.read(65536)
                assert chunk, received
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 ") and b'"type":"welcome"' in received
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            answer = await reader.readuntil(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()


async def _two_posts(port: int, token: str) -> list[tuple[bytes, bytes]]:
    """Two chat POSTs on one keep-alive connection: each answer's head and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for text in ("one", "two"):
            body = b'{"text":"%s"}' % text.encode()
            writer.write(b"POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (token.encode(), len(body), body))
            async with asyncio.timeout(5):
                head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                answers.append((head, await reader.readexactly(length)))
    finally:
        writer.close()
    return answers


async def test_a_chat_post_answered_directly_is_hypercorns_answer_and_keeps_its_connection(
        live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[bool] = []
    respond = hypercorn_bridge.respond

    def recording(*args: object) -> bool:
        written.append(respond(*args))  # type: ignore[arg-type]
        return written[-1]

    monkeypatch.setattr(asgi, "respond", recording)
    direct = await _two_posts(live_server.port, live_server.token("alice"))
    assert written == [True, True]
    plain = await _with_the_fast_path_off(monkeypatch, _two_posts)
    for (head, body), (plain_head, plain_body) in zip(direct, plain, strict=True):
        assert head.startswith(b"HTTP/1.1 202 \r\n")
        assert _without_date(head) == _without_date(plain_head)
        assert json.loads(body).keys() == json.loads(plain_body).keys() == {"id"}
    async with live_server.http() as client:
        history = (await client.get("/api/rooms/lobby/messages", headers={
            "Authorization": f"Bearer {live_server.token('reader')}"})).json()["messages"]
    assert [m["text"] for m in history] == ["one", "two"]


async def _ws_accept(port: int, token: str) -> tuple[bytes, bytes]:
    """A raw WebSocket upgrade of /ws/chat, with RFC 6455 §1.3's example key."""
    return await _head_and_welcome(
        port, f"GET /ws/chat?room=lobby&token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              "Sec-WebSocket-Version: 13\r\n\r\n")


async def test_a_websocket_accepted_directly_is_accepted_as_hypercorn_accepts_it(
        live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 101 and the welcome go out in one write past h11: the same head, byte for byte
    but the date, and the same access log line as Hypercorn's own accept."""
    from hypercorn.logging import Logger

    heads: list[bytes | None] = []
    accept_websocket = hypercorn_bridge.Bridge.accept_websocket

    async def recording(bridge: hypercorn_bridge.Bridge) -> bytes | None:
        heads.append(await accept_websocket(bridge))
        return heads[-1]

    logged: list[tuple[str, int]] = []

    async def access(self: Logger, request: dict, response: dict, request_time: float) -> None:
        logged.append((request["path"], response["status"]))

    monkeypatch.setattr(hypercorn_bridge.Bridge, "accept_websocket", recording)
    monkeypatch.setattr(Logger, "access", access)
    direct, welcome = await _ws_accept(live_server.port, live_server.token("alice"))
    assert len(heads) == 1 and heads[0] is not None and heads[0].startswith(direct)
    plain, _ = await _with_the_fast_path_off(monkeypatch, _ws_accept)
    assert direct.startswith(b"HTTP/1.1 101 \r\n") and b"\r\ndate: " in direct
    # the answer to RFC 6455 §1.3's example key
    assert b"\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in direct
    assert _without_date(direct) == _without_date(plain)
    assert welcome[:1] == b"\x81" and b'"type":"welcome"' in welcome  # an unmasked text frame
    assert [entry for entry in logged if entry[0] == "/ws/chat"] == [("/ws/chat", 101), ("/ws/chat", 101)]
