"""/metrics across two Hypercorn workers on Redis: a known sequence of connections,
publishes, a slow-consumer close and refused credentials on every path, and every scrape
(whichever worker answers it) shows each counter moved by exactly the right amount."""

from __future__ import annotations

import asyncio
import json
import socket
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from hubbub.client import AsyncRedisEmitter
from tests.conftest import make_token
from tests.e2e.clients import SSEStream, recv_json, recv_until, sse_connect, ws_connect
from tests.e2e.processes import REDIS_URL, Hypercorn, hypercorn

pytestmark = pytest.mark.redis

API_KEY = "metrics-secret-0123456789abcdef0123"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(server: Hypercorn) -> Samples:
    async with server.http() as client:  # a new connection: either worker may answer
        reply = await client.get("/metrics", headers={"Connection": "close"})
    assert reply.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def settled(server: Hypercorn, check: Any, timeout: float = 10.0) -> Samples:
    """Scrapes until ``check(samples)`` holds (deliveries reach the metrics within a second)."""
    async with asyncio.timeout(timeout):
        while True:
            samples = await scrape(server)
            if check(samples):
                return samples
            await asyncio.sleep(0.2)


async def test_two_workers_every_counter_moves_by_exactly_the_right_amount(redis_prefix: str) -> None:
    env = {"REDIS_URL": REDIS_URL, "REDIS_PREFIX": redis_prefix, "API_KEYS": f"ops:{API_KEY}",
           "OUTBOX_SIZE": "5", "RATE_LIMIT_BURST": "100", "MAX_MESSAGE_BYTES": "65536"}
    async with hypercorn(env, workers=2) as server, AsyncExitStack() as stack:
        ws_url = server.ws_url
        # Three room members, each in once its predecessor saw its own join: 1 + 2 + 3 joins.
        members = []
        for n in range(3):
            url = f"{ws_url}/ws/chat?room=m&token={make_token(f'u{n}')}"
            ws = await stack.enter_async_context(ws_connect(url))
            assert (await recv_json(ws))["type"] == "welcome"
            await recv_until(ws, "join")
            members.append(ws)
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=server.url, timeout=10))
        inboxes: list[SSEStream] = []
        for n in range(2):
            path = f"/sse/notifications?token={make_token(f'v{n}')}"
            sse = await stack.enter_async_context(sse_connect(http, path))
            assert (await sse.next_json())["type"] == "welcome"
            inboxes.append(sse)

        samples = await scrape(server)
        assert value(samples, "hubbub_connections", transport="websocket", endpoint="chat") == 3
        assert value(samples, "hubbub_connections", transport="sse", endpoint="notifications") == 2
        assert value(samples, "hubbub_connections_opened_total", transport="websocket", endpoint="chat") == 3
        assert value(samples, "hubbub_subscriptions", channel_kind="room") == 3
        assert value(samples, "hubbub_subscriptions", channel_kind="user") == 2
        assert value(samples, "hubbub_subscriptions", channel_kind="broadcast") == 2

        # Publishes: 4 by POST, 2 over WebSocket, 3 notifications by API key, 1 broadcast event.
        for n in range(4):
            reply = await http.post("/api/rooms/m/messages", json={"text": f"p{n}"},
                                    headers={"Authorization": f"Bearer {make_token('poster')}"})
            assert reply.status_code == 202
        for n in range(2):
            await members[0].send(json.dumps({"type": "chat", "text": f"w{n}", "ref": str(n)}))
            await recv_until(members[0], "ack")
        for n in range(3):
            reply = await http.post("/api/notifications", json={"user": "v0", "data": n},
                                    headers={"X-API-Key": API_KEY})
            assert reply.status_code == 202
        reply = await http.post("/api/publish", json={"channel": "broadcast", "type": "deploy", "data": 1},
                                headers={"Authorization": f"Bearer {make_token('ci', scope='publish')}"})
        assert reply.status_code == 202
        emitter = AsyncRedisEmitter(REDIS_URL, prefix=redis_prefix)  # around the servers, via Redis
        try:
            for n in range(2):
                await emitter.publish("room:m", n, type="job")
        finally:
            await emitter.aclose()
        for member in members:
            frame = await recv_until(member, "job")
            while frame["data"] != 1:
                frame = await recv_until(member, "job")
        await inboxes[1].until("deploy")

        # 6 joins, 4 POSTs to 3 members, 2 frames to the 2 others, 3 to v0, 1 to both inboxes,
        # 2 emitted to 3 members.
        expected_deliveries = 6 + 4 * 3 + 2 * 2 + 3 + 2 + 2 * 3
        samples = await settled(server, lambda s: value(s, "hubbub_deliveries_total") >= expected_deliveries
                                and value(s, "hubbub_emitter_messages", channel_kind="room") >= 2)
        assert value(samples, "hubbub_deliveries_total") == expected_deliveries
        assert value(samples, "hubbub_emitter_messages", channel_kind="room") == 2
        assert value(samples, "hubbub_messages_published_total", source="http", channel_kind="room") == 4
        assert value(samples, "hubbub_messages_published_total", source="websocket", channel_kind="room") == 2
        assert value(samples, "hubbub_messages_published_total", source="api_key", channel_kind="user") == 3
        assert value(samples, "hubbub_messages_published_total", source="http", channel_kind="broadcast") == 1
        assert value(samples, "hubbub_publish_to_socket_seconds_count") >= 10  # each one, where fanned out

        # Refused credentials, one on every path.
        await http.post("/api/rooms/m/messages", json={"text": "x"},
                        headers={"Authorization": "Bearer garbage"})
        await http.get(f"/sse/chat?room=m&token={make_token('late', ttl_s=-60)}")
        await http.get("/api/rooms/m/presence")
        await http.post("/api/publish", json={"channel": "broadcast", "type": "x"},
                        headers={"X-API-Key": "no" * 20})
        with pytest.raises(InvalidStatus):  # refused before the upgrade
            async with connect(f"{ws_url}/ws/chat?room=m&token=garbage"):
                pass
        async with connect(f"{ws_url}/ws/notifications") as first_frame:
            await first_frame.send(json.dumps({"type": "auth", "token": "garbage"}))
            await first_frame.wait_closed()

        # A slow consumer: a WebSocket that never reads, in a room flooded with big events.
        slow = await open_unread_websocket(server.port, f"/ws/chat?room=slow&token={make_token('slow')}")
        try:
            for _ in range(400):
                reply = await http.post("/api/publish", headers={"X-API-Key": API_KEY},
                                        json={"channel": "room:slow", "type": "bulk", "data": "z" * 30_000})
                assert reply.status_code == 202
                if value(await scrape(server), "hubbub_dropped_total", reason="slow_consumer"):
                    break
        finally:
            slow.close()

        for _ in range(5):  # every scrape the same, whichever worker answers
            samples = await scrape(server)
            assert value(samples, "hubbub_dropped_total", reason="slow_consumer") == 1
            failures = {(dict(labels)["reason"], dict(labels)["path"]): v
                        for (name, labels), v in samples.items() if name == "hubbub_auth_failures_total"}
            assert failures == {
                ("malformed", "/api/rooms/<room>/messages"): 1, ("expired", "/sse/chat"): 1,
                ("missing", "/api/rooms/<room>/presence"): 1, ("unknown_key", "/api/publish"): 1,
                ("malformed", "/ws/chat"): 1, ("malformed", "/ws/notifications"): 1}
            assert value(samples, "hubbub_connections", transport="websocket", endpoint="chat") == 3
            assert value(samples, "hubbub_backend_up") == 1
            assert value(samples, "hubbub_fast_path") == 1
            assert value(samples, "hubbub_build_info", version=_version()) == 1


def _version() -> str:
    import hubbub

    return hubbub.__version__


async def open_unread_websocket(port: int, path: str) -> socket.socket:
    """A WebSocket that never reads past its upgrade, with a small receive window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    async with asyncio.timeout(10):
        head = await loop.sock_recv(sock, 1024)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock
