"""The fast path's contract with Hypercorn: on HTTP/1.1 every live WebSocket and SSE
connection writes straight to its socket. It rests on private names of Hypercorn
(app/transports/hypercorn_bridge.py), so this fails the day a release moves one, rather
than letting the fast path switch itself off in silence.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from hubbub.transports import hypercorn_bridge
from hubbub.transports.live import LiveConnection
from hubbub.transports.pong_filter import PongFilter
from tests.conftest import LiveServer, run_server
from tests.e2e.clients import recv_json, recv_until, sse_connect, ws_connect


def test_fast_path_available_with_the_pinned_hypercorn() -> None:
    fast, why = hypercorn_bridge.status()
    assert fast, why


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
