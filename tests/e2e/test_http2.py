"""HTTP/2 and TLS: h2c by prior knowledge (Hypercorn takes it from any client that sends the
preface), HTTPS with ALPN, the outbox bound and the slow-consumer close per stream, a
reset that never takes a stream's neighbours down, and WebSocket over HTTP/2 (RFC 8441)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from tests.conftest import LiveServer, ServerFactory, make_token, run_server, write_certificate
from tests.e2e.clients import bearer, read_metrics, recv_json, sample, sse_connect
from tests.e2e.h2client import H2Client, Stream

TIMEOUT_S = 10.0


def sse_events(stream: Stream) -> list[dict[str, Any]]:
    """The JSON of every complete ``data:`` line received on a stream so far."""
    lines = bytes(stream.data).decode(errors="replace").split("\n")
    return [json.loads(line[6:]) for line in lines[:-1] if line.startswith("data: ")]


def has_event(kind: str, count: int = 1) -> Any:
    return lambda s: sum(e.get("type") == kind for e in sse_events(s)) >= count or s.reset or s.ended


async def test_h2c_sse_streams_and_posts_share_one_connection(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, http1=False, http2=True, timeout=10) as client:
        alice, bob = live_server.token("alice"), live_server.token("bob")
        async with sse_connect(client, f"/sse/notifications?token={alice}") as a, \
                sse_connect(client, f"/sse/notifications?token={bob}") as b:
            assert a.response.http_version == "HTTP/2"
            assert (await a.next_json())["type"] == (await b.next_json())["type"] == "welcome"
            ops = bearer(live_server.token("ops", scope="notify"))
            reply = await client.post("/api/notifications", json={"broadcast": True, "data": "both"},
                                      headers=ops)
            assert (reply.status_code, reply.http_version) == (202, "HTTP/2")
            assert (await a.next_json())["data"] == (await b.next_json())["data"] == "both"


async def test_h2_stream_without_credit_closed_as_slow_consumer_neighbour_goes_on(
        server_factory: ServerFactory) -> None:
    # The server may send 1 KB on a stream before the client's credit; the stuck stream
    # gets none. Its outbox fills, it is closed as a slow consumer, and reset: only it.
    server = await server_factory({"OUTBOX_SIZE": "20"})
    client = await H2Client.open(server.port, window=1024)
    try:
        stuck = client.request("GET", f"/sse/chat?room=lobby&token={make_token('stuck')}", credit=False)
        fine = client.request("GET", f"/sse/chat?room=lobby&token={make_token('fine')}")
        await client.until(fine, has_event("welcome"))
        # Paced by the reader that keeps up: past ~32 KB the server holds for the stuck
        # stream, the rest waits in its outbox of 20 until that overflows.
        for n in range(120):
            await server.hub.publish("room:lobby", {"type": "chat", "text": "x" * 600 + str(n)}, sender="p")
            await client.until(fine, has_event("chat", n + 1))
        stuck_stream = await client.until(stuck, lambda s: s.reset or s.ended, timeout=TIMEOUT_S)
        assert stuck_stream.reset  # dropped without waiting for the credit it will never get
        assert len(stuck_stream.data) <= 1024  # all its window allowed, and no more
        fine_stream = client.streams[fine]
        assert not fine_stream.reset and not client.terminated
        await server.hub.publish("room:lobby", {"type": "chat", "text": "after"}, sender="p")
        await client.until(fine, lambda s: any(e.get("text") == "after" for e in sse_events(s)))
        async with server.http() as http:
            assert sample(await read_metrics(http), "hubbub_dropped_total", reason="slow_consumer") == 1
    finally:
        await client.close()


async def test_h2_abort_of_one_stream_leaves_the_connection(server_factory: ServerFactory) -> None:
    # A token that expires closes its stream; the other user's stream on the same
    # connection, and the connection, stay.
    server = await server_factory({})
    client = await H2Client.open(server.port)
    try:
        short = client.request("GET", f"/sse/notifications?token={make_token('brief', ttl_s=1)}")
        long = client.request("GET", f"/sse/notifications?token={make_token('stays')}")
        await client.until(long, has_event("welcome"))
        await client.until(short, lambda s: s.ended or s.reset, timeout=TIMEOUT_S)
        await server.hub.notify("stays", "still here")
        stream = await client.until(long, has_event("notification"))
        assert not stream.reset and not client.terminated
    finally:
        await client.close()


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked


async def test_websocket_over_http2_rfc8441_echoes(live_server: LiveServer) -> None:
    client = await H2Client.open(live_server.port)
    try:
        sid = client.request("CONNECT", "/ws/echo", [("sec-websocket-version", "13")],
                             extra=[(":protocol", "websocket")], end=False)
        stream = await client.until(sid, lambda s: bool(s.headers) or s.reset)
        assert stream.headers.get(":status") == "200"
        client.send(sid, masked_text_frame("over h2"))
        await client.until(sid, lambda s: b"over h2" in s.data or s.reset)
        assert bytes(stream.data) == b"\x81\x07over h2"
    finally:
        await client.close()


async def test_tls_wss_and_https_sse_over_http2(tmp_path: Path) -> None:
    write_certificate(tmp_path)
    async with run_server(tls=tmp_path) as server:
        token = make_token("alice")
        async with connect(f"{server.ws_url}/ws/chat?room=lobby&token={token}", ssl=server.tls) as ws:
            assert (await recv_json(ws))["type"] == "welcome"
        async with server.http(http2=True) as client, \
                sse_connect(client, f"/sse/chat?room=lobby&token={token}") as sse:
            assert sse.response.http_version == "HTTP/2"  # ALPN chose h2
            assert (await sse.next_json())["type"] == "welcome"
            reply = await client.post("/api/rooms/lobby/messages", json={"text": "secure"},
                                      headers=bearer(token))
            assert reply.status_code == 202
            assert (await sse.until("chat"))["text"] == "secure"
