"""Presence in crowded rooms: join/leave up to PRESENCE_JOIN_LIMIT members, then one
`presence` frame per interval with the count and the changes; QUIET_ROOMS announce neither.
Against a real server, in memory and on Redis."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import LiveServer, ServerFactory
from tests.e2e.clients import eventually, recv_json, recv_until, ws_connect

REDIS_URL = "redis://127.0.0.1:6379/0"
PRESENCE = ("join", "leave", "presence")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def server(request: pytest.FixtureRequest, server_factory: ServerFactory,
                 redis_prefix: str) -> LiveServer:
    env = {"PRESENCE_JOIN_LIMIT": "2", "PRESENCE_INTERVAL": "0.2", "QUIET_ROOMS": "stage-*"}
    if request.param == "redis":
        env |= {"REDIS_URL": REDIS_URL, "REDIS_PREFIX": redis_prefix}
    return await server_factory(env)


async def next_presence(ws: ClientConnection) -> dict[str, Any]:
    """The next join, leave or presence frame (a chat message in between fails the test)."""
    frame = await recv_json(ws)
    assert frame["type"] in PRESENCE, frame
    return frame


async def members(server: LiveServer, room: str) -> set[str]:
    return {m["id"] for m in await server.hub.presence(f"room:{room}")}


async def test_past_the_limit_joins_and_leaves_come_as_presence_frames(server: LiveServer) -> None:
    url = f"{server.ws_url}/ws/chat?room=big&token="
    async with AsyncExitStack() as stack:
        alice = await stack.enter_async_context(ws_connect(url + server.token("alice")))
        await recv_until(alice, "welcome")
        assert (await next_presence(alice))["sender"] == "alice"  # 1 member: announced
        bob = await stack.enter_async_context(ws_connect(url + server.token("bob")))
        assert (await next_presence(alice)) | {"channel": None} == {"type": "join", "sender": "bob",
                                                                    "channel": None}
        carol = await stack.enter_async_context(ws_connect(url + server.token("carol")))
        # The third member: no join frame; the next presence frame says who came and how many.
        assert await next_presence(alice) == {"type": "presence", "channel": "room:big", "count": 3,
                                              "joined": ["carol"], "left": []}
        await carol.close()
        assert await next_presence(alice) == {"type": "presence", "channel": "room:big", "count": 2,
                                              "joined": [], "left": ["carol"]}
        await bob.close()  # back within the limit: announced again
        frame = await next_presence(alice)
        assert (frame["type"], frame["sender"]) == ("leave", "bob")


async def test_a_quiet_room_announces_no_one(server: LiveServer) -> None:
    url = f"{server.ws_url}/ws/chat?room=stage-1&token="
    async with ws_connect(url + server.token("alice")) as alice, ws_connect(url + server.token("bob")) as bob:
        await recv_until(alice, "welcome")
        await recv_until(bob, "welcome")
        await eventually(lambda: _equal(members(server, "stage-1"), {"alice", "bob"}))
        await bob.send(json.dumps({"type": "chat", "text": "on stage"}))
        # Presence frames go out ahead of any message that follows them: none came.
        frame = await recv_json(alice)
        assert (frame["type"], frame["text"]) == ("chat", "on stage")


async def _equal(value: Any, expected: Any) -> bool:
    return await value == expected
