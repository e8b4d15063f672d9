"""A client that stops reading is dropped; nobody else waits for it (API.md: Limits)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import statistics
import time

import httpx
from websockets.exceptions import ConnectionClosed

from tests.conftest import LiveServer, ServerFactory
from tests.e2e.clients import metric_reaches, recv_json, recv_until, sse_connect, ws_connect

FAST_LIMITS = {"RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000", "OUTBOX_SIZE": "50"}
MESSAGES = 400
TEXT = "x" * 24000  # 400 × 24 KB ≈ 10 MB: past the kernel buffers (a few MB) and the outbox


def stalled_socket(port: int, request_line: str, extra_headers: str = "") -> socket.socket:
    """A raw TCP client that sends one request and then never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"{request_line}\r\nHost: 127.0.0.1:{port}\r\n{extra_headers}\r\n".encode())
    return sock


def stalled_websocket(server: LiveServer, token: str) -> socket.socket:
    key = base64.b64encode(os.urandom(16)).decode()
    headers = (f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n")
    return stalled_socket(server.port, f"GET /ws/chat?room=lobby&token={token} HTTP/1.1", headers)


def stalled_sse(server: LiveServer, token: str) -> socket.socket:
    return stalled_socket(server.port, f"GET /sse/chat?room=lobby&token={token} HTTP/1.1")


async def post_all(client: httpx.AsyncClient, token: str, count: int) -> list[float]:
    """Posts ``count`` messages one after the other; returns each POST's latency in seconds."""
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        reply = await client.post("/api/rooms/lobby/messages", json={"text": f"{i} {TEXT}"},
                                  headers={"Authorization": f"Bearer {token}"})
        latencies.append(time.perf_counter() - started)
        assert reply.status_code == 202, reply.text
    return latencies


async def run_round(server: LiveServer, stalled: socket.socket | None) -> tuple[list[float], int]:
    """One subscriber reads everything while ``count`` messages are posted; returns latencies, received."""
    token = server.token("reader")
    async with server.http() as client, \
            ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={token}", max_size=None) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        received = 0

        async def read() -> None:
            nonlocal received
            while received < MESSAGES:
                frame = await recv_until(ws, "chat", timeout=10)
                assert frame["text"].startswith(f"{received} "), "out of order or lost"
                received += 1

        reader = asyncio.create_task(read())
        latencies = await post_all(client, server.token("poster"), MESSAGES)
        async with asyncio.timeout(20):
            await reader
        return latencies, received


async def test_stalled_websocket_is_dropped_and_others_get_everything(server_factory: ServerFactory) -> None:
    server = await server_factory(FAST_LIMITS)
    baseline_latencies, _ = await run_round(server, None)
    stalled = stalled_websocket(server, server.token("stalled"))
    try:
        latencies, received = await run_round(server, stalled)
        async with server.http() as client:
            await metric_reaches(client, "hubbub_dropped_total", lambda n: n == 1, reason="slow_consumer")
            await metric_reaches(client, "hubbub_connections", lambda n: n == 0,  # dropped
                                 transport="websocket", endpoint="chat")
    finally:
        stalled.close()
    assert received == MESSAGES
    # The publisher never waits for the stalled client: its median POST stays near the baseline.
    assert statistics.median(latencies) < 3 * statistics.median(baseline_latencies) + 0.02


async def test_stalled_sse_is_dropped_and_others_get_everything(server_factory: ServerFactory) -> None:
    server = await server_factory(FAST_LIMITS)
    baseline_latencies, _ = await run_round(server, None)
    stalled = stalled_sse(server, server.token("stalled"))
    try:
        latencies, received = await run_round(server, stalled)
        async with server.http() as client:
            await metric_reaches(client, "hubbub_dropped_total", lambda n: n == 1, reason="slow_consumer")
            await metric_reaches(client, "hubbub_connections", lambda n: n == 0,
                                 transport="sse", endpoint="chat")
    finally:
        stalled.close()
    assert received == MESSAGES
    assert statistics.median(latencies) < 3 * statistics.median(baseline_latencies) + 0.02


async def burst(server: LiveServer, count: int, size: int) -> None:
    """Server-side publishes in a tight loop: far more than socket buffers hold, with no pause."""
    for i in range(count):
        await server.hub.publish("room:lobby", {"type": "chat", "text": f"{i} " + "x" * size},
                                 sender="bot")


BURST, SIZE = 1000, 16_000  # 16 MB: past the kernel's socket buffers and the transport's


async def test_websocket_outbox_overflow_closes_1013(server_factory: ServerFactory) -> None:
    server = await server_factory({"OUTBOX_SIZE": "5"})
    token = server.token("slow")
    async with ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={token}", max_size=None) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await burst(server, BURST, SIZE)
        chats = 0
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(10):
                async for raw in ws:  # what was written before the overflow, then the close
                    chats += '"type":"chat"' in raw
        assert ws.close_code == 1013
        assert 0 < chats < BURST  # the rest is dropped: the client resumes from history


async def test_sse_outbox_overflow_ends_the_stream(server_factory: ServerFactory) -> None:
    server = await server_factory({"OUTBOX_SIZE": "5"})
    token = server.token("slow")
    async with server.http() as client, sse_connect(client, f"/sse/chat?room=lobby&token={token}") as sse:
        assert (await sse.next_json())["type"] == "welcome"
        await burst(server, BURST, SIZE)
        chats = 0
        while (event := await sse.next(timeout=10)) is not None:
            chats += event.json()["type"] == "chat"
        assert chats < BURST  # ended before the whole burst: the client resumes from history
