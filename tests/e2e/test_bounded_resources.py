"""Nothing unbounded: message sizes in bytes before they are buffered, replays paced by the
socket, /ws/echo under every rule, MAX_CONNECTIONS, tickets and publishers limited.

Each test reproduces what a stranger or a careless client did to a real server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import struct
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, ServerFactory, make_token
from tests.e2e.clients import (
    bearer,
    body_json,
    read_metrics,
    recv_close,
    recv_json,
    sample,
    sse_connect,
    ws_connect,
    ws_rejected,
)
from tests.e2e.processes import hypercorn

TIMEOUT_S = 10.0
MAX_BYTES = 65536


class RawWebSocket:
    """A WebSocket client written by hand, to send what no library would: a frame header
    announcing 16 MB, then its payload a piece at a time, while reading what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sent = 0
        self.frames: list[tuple[int, bytes]] = []

    @classmethod
    async def open(cls, port: int, path: str, headers: dict[str, str] | None = None) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send_header(self, length: int, *, opcode: int = 0x1, fin: bool = True) -> None:
        first = (0x80 if fin else 0) | opcode
        if length < 126:  # the shortest length encoding, as RFC 6455 requires
            header = struct.pack("!BB", first, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", first, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, length)
        self.writer.write(header + b"\0\0\0\0")  # a zero mask key

    async def send_payload(self, data: bytes) -> None:
        self.writer.write(data)  # masked with a zero key: the bytes as they are
        self.sent += len(data)
        await self.writer.drain()

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        frame = (first & 0x0F, await self.reader.readexactly(length))
        self.frames.append(frame)
        return frame

    async def close_code(self) -> int:
        """Reads frames until the server's close frame; its code."""
        while True:
            opcode, payload = await self.read_frame()
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])

    async def closed_by_server(self) -> bool:
        """True once the server drops the TCP connection."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()


async def send_past_the_limit(ws: RawWebSocket, piece: int = 16 * 1024) -> int:
    """Sends pieces of the announced message until just past MAX_BYTES (plus what the server
    may read in one go), then waits: the server closes now, or only at 16 MiB as it used to."""
    while ws.sent < MAX_BYTES + 2 * piece:
        await ws.send_payload(b"a" * piece)
    async with asyncio.timeout(TIMEOUT_S):
        return await ws.close_code()


# -- message size: refused before it is buffered, counted in bytes ------------------------


@pytest.mark.parametrize("path", ["/ws/echo", "/ws/chat?room=lobby&token={token}",
                                  "/ws/notifications?token={token}", "/ws/notifications"])
async def test_websocket_announced_16mb_message_closed_1009_near_the_limit(
        live_server: LiveServer, path: str) -> None:
    ws = await RawWebSocket.open(live_server.port, path.format(token=live_server.token("mallory")))
    try:
        ws.send_header(16_000_000)
        # Refused once the limit was crossed, not after 16 MB were held: Hypercorn's own
        # check comes at 16 MiB, and kept gathering even past that.
        assert await send_past_the_limit(ws) == 1009
        async with asyncio.timeout(TIMEOUT_S):  # not answering the close: dropped
            assert await ws.closed_by_server()
    finally:
        ws.close()


async def test_websocket_fragmented_message_over_the_limit_closed_1009(live_server: LiveServer) -> None:
    ws = await RawWebSocket.open(live_server.port, "/ws/echo")
    try:
        piece, opcode = 16 * 1024, 0x1
        while ws.sent < MAX_BYTES + 2 * piece:  # fragments, none of them final
            ws.send_header(piece, opcode=opcode, fin=False)
            await ws.send_payload(b"b" * piece)
            opcode = 0x0  # continuation
        async with asyncio.timeout(TIMEOUT_S):
            assert await ws.close_code() == 1009
    finally:
        ws.close()


@pytest.mark.parametrize("pieces", [["héllo ", "wör", "ld"], [b"\x00\x01", b"\x02", b"\xff"]],
                         ids=["text", "binary"])
async def test_websocket_fragmented_messages_under_the_limit_arrive_whole(
        live_server: LiveServer, pieces: list[Any]) -> None:
    # The size-limiting buffer keeps no list between messages: each one starts afresh.
    async with ws_connect(f"{live_server.ws_url}/ws/echo") as ws:
        for _ in range(2):
            await ws.send(iter(pieces))  # one message, a frame per piece
            async with asyncio.timeout(TIMEOUT_S):
                assert await ws.recv() == pieces[0][:0].join(pieces)


async def test_websocket_limit_holds_under_the_hypercorn_command_line() -> None:
    # The Procfile, `make run` and a plain `hypercorn 'app:create_app()'` all serve this way.
    async with hypercorn({}) as server:
        ws = await RawWebSocket.open(server.port, "/ws/echo")
        try:
            ws.send_header(16_000_000)
            assert await send_past_the_limit(ws) == 1009
        finally:
            ws.close()


async def test_chat_frame_of_multibyte_text_over_the_limit_in_bytes_closed_1009(
        live_server: LiveServer) -> None:
    text = json.dumps({"type": "chat", "text": "é" * 60_000}, ensure_ascii=False)
    assert len(text) < MAX_BYTES < len(text.encode())  # under in characters, over in bytes
    url = f"{live_server.ws_url}/ws/chat?room=lobby&token={live_server.token('alice')}"
    async with ws_connect(url) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send(text)
        code, _ = await recv_close(ws)
    assert code == 1009


async def test_echo_of_emoji_over_the_limit_in_bytes_closed_1009(live_server: LiveServer) -> None:
    async with ws_connect(f"{live_server.ws_url}/ws/echo") as ws:
        await ws.send("😀" * 60_000)  # 240 KB of UTF-8 in 60,000 characters
        code, _ = await recv_close(ws)
    assert code == 1009


async def test_websocket_text_just_under_the_limit_in_bytes_echoed(live_server: LiveServer) -> None:
    text = "é" * (MAX_BYTES // 2)
    async with ws_connect(f"{live_server.ws_url}/ws/echo") as ws:
        await ws.send(text)
        async with asyncio.timeout(TIMEOUT_S):
            assert await ws.recv() == text


# -- replays paced by the socket -----------------------------------------------------------


async def notify(client: httpx.AsyncClient, token: str, body: dict[str, Any]) -> str:
    reply = await client.post("/api/notifications", json=body, headers=bearer(token))
    assert reply.status_code == 202, reply.text
    return str(reply.json()["id"])


async def test_notifications_resume_past_the_outbox_size_replays_everything(
        server_factory: ServerFactory) -> None:
    # 600 to bob and 600 to everyone behind the cursor: more than OUTBOX_SIZE (1000). The
    # replay used to be poured into the outbox at once: close 1013 on every retry.
    server = await server_factory({"PUBLISH_RATE_LIMIT_BURST": "2000"})
    first = await server.hub.notify("bob", {"n": 0})
    for n in range(1, 1200):
        await (server.hub.notify("bob", {"n": n}) if n % 2 else server.hub.broadcast({"n": n}))
    token = server.token("bob")
    url = f"{server.ws_url}/ws/notifications?since={first.id}&token={token}"
    async with ws_connect(url, max_queue=None) as ws:
        welcome = await recv_json(ws)
        assert welcome["recovered"] is True
        ws_numbers = [(await recv_json(ws))["data"]["n"] for _ in range(1199)]
    async with server.http() as client, sse_connect(
            client, f"/sse/notifications?last_event_id={first.id}&token={token}") as sse:
        assert (await sse.next_json())["recovered"] is True
        sse_numbers = [(await sse.next_json())["data"]["n"] for _ in range(1199)]
    assert ws_numbers == sse_numbers == list(range(1, 1200))


async def test_room_resume_history_larger_than_outbox_replays_everything(
        server_factory: ServerFactory) -> None:
    server = await server_factory({"HISTORY_SIZE": "2000", "OUTBOX_SIZE": "50"})
    sent = [await server.hub.publish("room:big", {"type": "chat", "text": str(n)}, sender="a")
            for n in range(1500)]
    url = f"{server.ws_url}/ws/chat?room=big&since={sent[0].id}&token={server.token('reader')}"
    async with ws_connect(url, max_queue=None) as ws:
        assert (await recv_json(ws))["recovered"] is True
        texts = []
        while len(texts) < 1499:
            frame = await recv_json(ws)
            if frame["type"] == "chat":
                texts.append(frame["text"])
    assert texts == [str(n) for n in range(1, 1500)]


# -- /ws/echo obeys every rule -------------------------------------------------------------


async def test_echo_disallowed_origin_refused_403(server_factory: ServerFactory) -> None:
    server = await server_factory({"ALLOWED_ORIGINS": "https://app.example"})
    response = await ws_rejected(f"{server.ws_url}/ws/echo", origin="http://evil.example")  # type: ignore[arg-type]
    assert response.status_code == 403
    assert body_json(response)["error"] == "forbidden"


async def test_echo_silent_peer_closed_1013_after_idle_timeout(server_factory: ServerFactory) -> None:
    server = await server_factory({"IDLE_TIMEOUT": "0.5", "HEARTBEAT_INTERVAL": "0.2"})
    ws = await RawWebSocket.open(server.port, "/ws/echo")  # never answers a ping
    try:
        async with asyncio.timeout(TIMEOUT_S):
            assert await ws.close_code() == 1013
        assert any(opcode == 0x9 for opcode, _ in ws.frames)  # it was pinged first
    finally:
        ws.close()


async def test_echo_peer_answering_pings_stays_open_past_idle_timeout(server_factory: ServerFactory) -> None:
    server = await server_factory({"IDLE_TIMEOUT": "0.5", "HEARTBEAT_INTERVAL": "0.2"})
    async with ws_connect(f"{server.ws_url}/ws/echo") as ws:  # answers pings by itself
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await ws.recv()
        await ws.send("still here")
        async with asyncio.timeout(TIMEOUT_S):
            assert await ws.recv() == "still here"


async def test_echo_rate_limited_per_connection(server_factory: ServerFactory) -> None:
    server = await server_factory({"RATE_LIMIT_BURST": "3", "RATE_LIMIT_PER_SECOND": "0.01"})
    async with ws_connect(f"{server.ws_url}/ws/echo") as ws:
        for n in range(3):
            await ws.send(f"m{n}")
            async with asyncio.timeout(TIMEOUT_S):
                assert await ws.recv() == f"m{n}"
        await ws.send("one too many")
        error = await recv_json(ws)
    assert (error["type"], error["code"]) == ("error", "rate_limited")


async def test_echo_drained_with_1012(live_server: LiveServer) -> None:
    async with ws_connect(f"{live_server.ws_url}/ws/echo") as ws:
        await ws.send("hi")
        async with asyncio.timeout(TIMEOUT_S):
            assert await ws.recv() == "hi"
        live_server.hub.close_subscriptions()  # what SIGTERM does
        code, _ = await recv_close(ws)
    assert code == 1012


# -- MAX_CONNECTIONS -----------------------------------------------------------------------


async def test_max_connections_refused_503_json_retry_after_on_every_endpoint(
        server_factory: ServerFactory) -> None:
    server = await server_factory({"MAX_CONNECTIONS": "2"})
    token = server.token("alice")
    async with ws_connect(f"{server.ws_url}/ws/echo"), \
            ws_connect(f"{server.ws_url}/ws/notifications?token={token}") as held:
        assert (await recv_json(held))["type"] == "welcome"
        for path in ("/ws/echo", f"/ws/chat?room=lobby&token={token}", f"/ws/notifications?token={token}"):
            response = await ws_rejected(f"{server.ws_url}{path}")
            assert response.status_code == 503, path
            assert response.headers["Retry-After"] == "5"
            assert body_json(response)["error"] == "unavailable"
        async with server.http() as client:
            reply = await client.get(f"/sse/notifications?token={token}")
            assert (reply.status_code, reply.json()["error"]) == (503, "unavailable")
            assert reply.headers["Retry-After"] == "5"
            assert (await client.get("/healthz")).json()["connections"] == 2
            metrics = await read_metrics(client)
    assert sample(metrics, "hubbub_connections_refused_total", reason="max_connections") == 4
    async with ws_connect(f"{server.ws_url}/ws/echo") as ws:  # a slot is free again
        await ws.send("x")
        async with asyncio.timeout(TIMEOUT_S):
            assert await ws.recv() == "x"


def _low_fd_limit(soft: int, hard: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_server_raises_its_fd_limit_and_derives_max_connections() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = min(hard, 4096)
    async with hypercorn({}, preexec=lambda: _low_fd_limit(256, hard)) as server:
        pass
    assert f"max connections={hard - hard // 10}" in server.output


async def test_out_of_file_descriptors_refused_not_flooding_the_log() -> None:
    # 400 WebSockets at once against 256 descriptors: the ones past MAX_CONNECTIONS get a
    # 503, accept() fails for some while the refused close, and the log stays short.
    crowd = Crowd(400)
    async with hypercorn({}, preexec=lambda: _low_fd_limit(256, 256), worker_class="asyncio") as server:
        outcomes = await asyncio.gather(*(crowd.open_echo(server.ws_url) for _ in range(crowd.size)))
        async with server.http() as client, asyncio.timeout(TIMEOUT_S):
            while True:  # it serves again once the crowd is gone
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
    assert 0 < outcomes.count("open") <= 192  # 256 - 64 kept for what is not a connection
    assert "refused 503" in outcomes
    assert "Traceback" not in server.output
    # One line as each connection opens and closes (hubbub.connections), and few others.
    other = [line for line in server.output.splitlines() if "hubbub.connections" not in line]
    assert len(other) < 40, "\n".join(other)[-3000:]


class Crowd:
    """Clients that each hold their connection until every one of them has got an answer."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._answered = 0
        self._everyone = asyncio.Event()

    def _answer(self) -> None:
        self._answered += 1
        if self._answered == self.size:
            self._everyone.set()

    async def open_echo(self, ws_url: str) -> str:
        try:
            async with ws_connect(f"{ws_url}/ws/echo") as ws:
                await ws.send("x")
                async with asyncio.timeout(TIMEOUT_S):
                    await ws.recv()
                self._answer()
                async with asyncio.timeout(3 * TIMEOUT_S):
                    await self._everyone.wait()
                return "open"
        except Exception as error:  # refused, reset or timed out: what the crowd met
            if not self._everyone.is_set():
                self._answer()
            status = getattr(getattr(error, "response", None), "status_code", None)
            return f"refused {status}" if status else type(error).__name__


# -- tickets open one stream, nothing else; publishers are limited -----------------------


async def ticket(client: httpx.AsyncClient, token: str) -> str:
    reply = await client.post("/auth/ticket", headers=bearer(token))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["ticket"])


async def test_ticket_refused_outside_live_streams(live_server: LiveServer) -> None:
    token = live_server.token("ops", scope="notify")
    async with live_server.http() as client:
        for method, path, body in (("POST", "/api/notifications", {"broadcast": True, "data": 1}),
                                   ("POST", "/auth/ticket", None),
                                   ("POST", "/api/rooms/lobby/messages", {"text": "hi"}),
                                   ("GET", "/api/rooms/lobby/messages", None)):
            one = await ticket(client, token)
            reply = await client.request(method, f"{path}?ticket={one}", json=body)
            assert reply.status_code == 401, path
            assert "ticket" in reply.json()["detail"]
            # ...and it still opens a stream, once
            async with sse_connect(client, f"/sse/notifications?ticket={one}") as sse:
                assert (await sse.next_json())["type"] == "welcome"


async def test_ticket_minting_throttled_per_user(server_factory: ServerFactory) -> None:
    server = await server_factory({"MAX_CONNECTIONS_PER_USER": "3"})
    async with server.http() as client:
        statuses = [(await client.post("/auth/ticket", headers=bearer(server.token("alice")))).status_code
                    for _ in range(7)]
        other = await client.post("/auth/ticket", headers=bearer(server.token("bob")))
    assert statuses == [200] * 6 + [429]  # twice the connections a user may hold
    assert other.status_code == 200


async def test_notification_publisher_rate_limited(server_factory: ServerFactory) -> None:
    server = await server_factory({"PUBLISH_RATE_LIMIT_BURST": "3",
                                   "PUBLISH_RATE_LIMIT_PER_SECOND": "0.01"})
    token = server.token("ops", scope="notify")
    async with server.http() as client:
        replies = [await client.post("/api/notifications", json={"user": f"u{n}", "data": n},
                                     headers=bearer(token)) for n in range(4)]
        other = await client.post("/api/notifications", json={"broadcast": True, "data": 0},
                                  headers=bearer(server.token("ops2", scope="notify")))
    assert [r.status_code for r in replies] == [202, 202, 202, 429]
    assert replies[-1].json()["error"] == "rate_limited" and "Retry-After" in replies[-1].headers
    assert other.status_code == 202


async def test_demo_login_publisher_limited_like_chat(server_factory: ServerFactory) -> None:
    server = await server_factory({"DEMO_LOGIN": "1", "RATE_LIMIT_BURST": "2",
                                   "RATE_LIMIT_PER_SECOND": "0.01"})
    async with server.http() as client:
        reply = await client.post("/auth/demo-token", json={"user": "anon", "scope": "notify"})
        token = reply.json()["token"]
        statuses = [(await client.post("/api/notifications", json={"broadcast": True, "data": n},
                                       headers=bearer(token))).status_code for n in range(3)]
    assert statuses == [202, 202, 429]


# -- the per-user limit holds across processes ----------------------------------------------


@pytest.mark.redis
async def test_connections_per_user_limit_holds_across_processes(
        server_factory: ServerFactory, redis_prefix: str) -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_PREFIX": redis_prefix,
           "MAX_CONNECTIONS_PER_USER": "2"}
    first, second = await server_factory(env), await server_factory(env)
    token = make_token("alice")
    async with ws_connect(f"{first.ws_url}/ws/notifications?token={token}") as a, \
            ws_connect(f"{second.ws_url}/ws/notifications?token={token}") as b:
        assert (await recv_json(a))["type"] == (await recv_json(b))["type"] == "welcome"
        for server in (first, second):
            response = await ws_rejected(f"{server.ws_url}/ws/notifications?token={token}")
            assert response.status_code == 429
        async with second.http() as client:
            reply = await client.get(f"/sse/notifications?token={token}")
            assert reply.status_code == 429
    # both closed: the slots are free on either process
    async with ws_connect(f"{second.ws_url}/ws/notifications?token={token}") as c:
        assert (await recv_json(c))["type"] == "welcome"
