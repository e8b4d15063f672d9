"""Errors inside a connection are logged once, with the connection's user and channel."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

import hubbub.transports.websocket as websocket_transport
from tests.conftest import LiveServer
from tests.e2e.clients import recv_json, ws_connect


async def test_error_inside_a_connection_is_logged_once_with_user_and_channel(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_parse = websocket_transport.parse_frame

    def parse_or_break(data: str | bytes) -> object:
        if data == "boom":
            raise RuntimeError("a bug in frame handling")
        return real_parse(data)

    monkeypatch.setattr(websocket_transport, "parse_frame", parse_or_break)
    token = live_server.token("mallory")
    with caplog.at_level(logging.ERROR):
        async with ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
            await ws.send("boom")
            async with asyncio.timeout(5):
                await ws.wait_closed()
            assert ws.close_code == 1011
        # A neighbour is not affected.
        async with ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as other:
            assert (await recv_json(other))["type"] == "welcome"
            await other.send(json.dumps({"type": "ping"}))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "mallory" in errors[0].getMessage() and "room:lobby" in errors[0].getMessage()
    assert errors[0].exc_info is not None  # with the traceback, once
    assert token not in caplog.text
