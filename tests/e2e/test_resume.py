"""Resume: WebSocket ``since``, SSE ``Last-Event-ID`` / ``last_event_id``, the seam, stale cursors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.conftest import LiveServer, ServerFactory
from tests.e2e.clients import bearer, recv_json, sse_connect, ws_connect

Frame = dict[str, Any]
NextFrame = Callable[[], Awaitable[Frame]]


async def publish(server: LiveServer, count: int, room: str = "lobby") -> list[str]:
    ids = []
    for i in range(count):
        message = await server.hub.publish(f"room:{room}", {"type": "chat", "text": f"m{i}"},
                                           sender="bot")
        assert message.id is not None
        ids.append(message.id)
    return ids


@asynccontextmanager
async def subscribe(server: LiveServer, transport: str, cursor: str | None = None,
                    via: str = "query", room: str = "lobby") -> AsyncIterator[NextFrame]:
    """A room subscription over ``transport``; yields a function returning the next frame."""
    token = server.token("reader")
    if transport == "ws":
        since = "" if cursor is None else f"&since={cursor}"
        async with ws_connect(f"{server.ws_url}/ws/chat?room={room}&token={token}{since}") as ws:
            yield lambda: recv_json(ws)
        return
    path, headers = f"/sse/chat?room={room}", bearer(token)
    if cursor is not None and via == "header":
        headers["Last-Event-ID"] = cursor
    elif cursor is not None:
        path += f"&last_event_id={cursor}"
    async with server.http() as client, sse_connect(client, path, headers=headers) as sse:
        yield sse.next_json


async def next_message(next_frame: NextFrame) -> Frame:
    """The next frame that is not a join/leave (those are live-only presence frames)."""
    while True:
        frame = await next_frame()
        if frame["type"] not in ("join", "leave"):
            return frame


async def ids_until(next_frame: NextFrame, last_id: str) -> list[str]:
    ids: list[str] = []
    while not ids or ids[-1] != last_id:
        frame = await next_message(next_frame)
        assert frame["type"] == "chat", frame
        ids.append(frame["id"])
    return ids


TRANSPORTS = [("ws", "query"), ("sse", "header"), ("sse", "query")]


@pytest.mark.parametrize(("transport", "via"), TRANSPORTS)
async def test_resume_cursor_replays_after_it_in_order_then_live(
    live_server: LiveServer, transport: str, via: str,
) -> None:
    ids = await publish(live_server, 5)
    await publish(live_server, 2, room="elsewhere")  # other channels never leak in
    async with subscribe(live_server, transport, ids[1], via) as next_frame:
        welcome = await next_frame()
        assert (welcome["type"], welcome["recovered"]) == ("welcome", True)
        replayed = [await next_message(next_frame) for _ in range(3)]
        assert [m["id"] for m in replayed] == ids[2:]
        assert [m["text"] for m in replayed] == ["m2", "m3", "m4"]
        live = await publish(live_server, 1)
        assert await ids_until(next_frame, live[0]) == live


@pytest.mark.parametrize(("transport", "via"), TRANSPORTS)
async def test_resume_cursor_at_newest_replays_nothing_then_live(
    live_server: LiveServer, transport: str, via: str,
) -> None:
    ids = await publish(live_server, 3)
    async with subscribe(live_server, transport, ids[-1], via) as next_frame:
        assert (await next_frame())["recovered"] is True
        live = await publish(live_server, 1)
        assert await ids_until(next_frame, live[0]) == live


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_resume_while_publishing_nothing_lost_or_repeated_at_seam(
    live_server: LiveServer, transport: str,
) -> None:
    first = (await publish(live_server, 1))[0]
    published: list[str] = []
    welcomed = asyncio.Event()

    async def publisher() -> None:
        after_welcome = 0
        while after_welcome < 20 and len(published) < 500:
            published.extend(await publish(live_server, 1))
            after_welcome += welcomed.is_set()
            await asyncio.sleep(0)  # lets the handshake interleave with publishing

    task = asyncio.create_task(publisher())
    try:
        async with asyncio.timeout(10):
            while True:  # publishing has begun before we connect
                if published:
                    break
                await asyncio.sleep(0)
        before = len(published)
        async with subscribe(live_server, transport, first) as next_frame:
            welcome = await next_frame()
            welcomed.set()
            during = len(published)
            assert welcome["recovered"] is True
            async with asyncio.timeout(10):
                await task
            assert during > before, "nothing was published while connecting: the seam went untested"
            assert await ids_until(next_frame, published[-1]) == published
            sentinel = await publish(live_server, 1)
            assert await ids_until(next_frame, sentinel[0]) == sentinel
    finally:
        task.cancel()


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_resume_sse_reconnect_with_last_seen_id_gets_missed_messages(
    live_server: LiveServer, transport: str,
) -> None:
    async with subscribe(live_server, transport) as next_frame:
        assert (await next_frame())["recovered"] is None
        seen = await publish(live_server, 2)
        assert await ids_until(next_frame, seen[-1]) == seen
    missed = await publish(live_server, 3)
    async with subscribe(live_server, transport, seen[-1], via="header") as next_frame:
        assert (await next_frame())["recovered"] is True
        assert await ids_until(next_frame, missed[-1]) == missed


@pytest.mark.parametrize("transport", ["ws", "sse"])
@pytest.mark.parametrize("cursor", [None, ""])
async def test_welcome_without_cursor_recovered_null_and_no_replay(
    live_server: LiveServer, transport: str, cursor: str | None,
) -> None:
    await publish(live_server, 3)
    async with subscribe(live_server, transport, cursor) as next_frame:
        assert (await next_frame())["recovered"] is None
        live = await publish(live_server, 1)
        assert await ids_until(next_frame, live[0]) == live


async def expect_resync_then_live(server: LiveServer, next_frame: NextFrame) -> None:
    welcome = await next_frame()
    assert (welcome["type"], welcome["recovered"]) == ("welcome", False)
    assert await next_message(next_frame) == {"type": "resync"}
    live = await publish(server, 1)
    assert await ids_until(next_frame, live[0]) == live  # no wrong replay before it


@pytest.mark.parametrize(("transport", "via"), TRANSPORTS)
@pytest.mark.parametrize("cursor", ["garbage", "deadbeef-x", "-5", "deadbeef-99999999999999999999",
                                    "deadbeef-%C2%B2"])  # "²": str.isdigit() is true, int() fails
async def test_stale_cursor_garbage_recovered_false_then_resync(
    live_server: LiveServer, transport: str, via: str, cursor: str,
) -> None:
    await publish(live_server, 3)
    async with subscribe(live_server, transport, cursor, via) as next_frame:
        await expect_resync_then_live(live_server, next_frame)


@pytest.mark.parametrize(("transport", "via"), TRANSPORTS)
async def test_stale_cursor_from_another_epoch_recovered_false_then_resync(
    live_server: LiveServer, server_factory: ServerFactory, transport: str, via: str,
) -> None:
    other = await server_factory()
    foreign = await publish(other, 3)
    await publish(live_server, 3)
    async with subscribe(live_server, transport, foreign[0], via) as next_frame:
        await expect_resync_then_live(live_server, next_frame)


@pytest.mark.parametrize(("transport", "via"), TRANSPORTS)
async def test_stale_cursor_older_than_history_resync_boundary_recovers(
    server_factory: ServerFactory, transport: str, via: str,
) -> None:
    server = await server_factory({"HISTORY_SIZE": "3"})
    ids = await publish(server, 6)  # ids[0:3] fell out of history
    async with subscribe(server, transport, ids[2], via) as next_frame:  # nothing after it was lost
        assert (await next_frame())["recovered"] is True
        assert await ids_until(next_frame, ids[5]) == ids[3:]
    async with subscribe(server, transport, ids[1], via) as next_frame:  # ids[2] was lost
        await expect_resync_then_live(server, next_frame)
