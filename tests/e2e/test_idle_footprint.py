"""What an idle connection keeps in the server, and what a failing live handler leaves behind.

A live connection keeps every coroutine frame in its task's chain for its whole life, so
the chain is part of its memory (docs/performance.md): hubbub's share of it is the
endpoint's handler, which also reads the peer's frames, and nothing else. The server runs
in-process, so the test can walk its tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import CoroutineType
from typing import Any

import pytest

import hubbub
from tests.conftest import LiveServer
from tests.e2e.clients import eventually, metric_reaches, recv_close, recv_json, sse_connect, ws_connect

HUBBUB_DIR = str(Path(hubbub.__file__).parent)


def awaited_chain(coro: Any) -> Iterator[CoroutineType[Any, Any, Any]]:
    """A task's coroutine and each one it is suspended in, outermost first."""
    while isinstance(coro, CoroutineType):
        yield coro
        coro = coro.cr_await


def hubbub_frames(handler: str) -> list[list[str]]:
    """For each task whose chain runs ``handler`` (a qualified name), hubbub's frames in it."""
    chains = []
    for task in asyncio.all_tasks():
        names = [(c.cr_code.co_filename, c.cr_code.co_qualname) for c in awaited_chain(task.get_coro())]
        if any(name == handler for _, name in names):
            chains.append([name for filename, name in names if filename.startswith(HUBBUB_DIR)])
    return chains


async def test_an_idle_websocket_keeps_one_coroutine_frame_of_hubbubs(live_server: LiveServer) -> None:
    url = f"{live_server.ws_url}/ws/chat?room=lobby&token={live_server.token('ada')}"
    async with ws_connect(url) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        assert hubbub_frames("_serve") == [["_serve"]]


async def test_an_idle_sse_stream_keeps_one_coroutine_frame_of_hubbubs(live_server: LiveServer) -> None:
    async with live_server.http() as client, sse_connect(
            client, f"/sse/chat?room=lobby&token={live_server.token('ada')}") as stream:
        assert (await stream.next_json())["type"] == "welcome"
        assert hubbub_frames("_serve") == [["_serve"]]


async def test_a_live_handler_that_fails_is_closed_1011_and_cleaned_up(
        live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The router does not catch: the server answers a handler that raised (here, after the
    accept, with close 1011), and the connection's count, slot and subscription are undone."""
    hub = live_server.hub

    async def broken_join(channel: str, user: str, connection: str) -> None:
        raise RuntimeError("join failed")

    monkeypatch.setattr(hub, "join", broken_join)
    url = f"{live_server.ws_url}/ws/chat?room=lobby&token={live_server.token('ada')}"
    async with ws_connect(url) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        code, _ = await recv_close(ws)
    assert code == 1011

    async def undone() -> bool:
        subscribers = dict(hub.subscriber_counts()).get("room:lobby", 0)
        return live_server.services.limits.total == 0 and subscribers == 0

    await eventually(undone)
    async with live_server.http() as client:
        await metric_reaches(client, "hubbub_connections", lambda n: n == 0, transport="websocket",
                             endpoint="chat")
    monkeypatch.undo()
    async with ws_connect(url) as ws:  # the next one is served as usual
        assert (await recv_json(ws))["type"] == "welcome"
