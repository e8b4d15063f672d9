"""Crowds: which joins and leaves go out at once, and what a presence frame gathers."""

from __future__ import annotations

import asyncio
import json

from hubbub.hub.crowds import NAMES_PER_FRAME, Crowds


def crowds(sent: list[tuple[str, dict[str, object]]], arrived: asyncio.Event, **kwargs: object) -> Crowds:
    async def publish_live(channel: str, frame: str) -> None:
        sent.append((channel, json.loads(frame)))
        arrived.set()

    options = {"join_limit": 3, "interval_s": 0.01, "quiet": ("stage-*",)} | kwargs
    return Crowds(publish_live, **options)  # type: ignore[arg-type]


async def test_announced_up_to_the_limit_and_never_in_a_quiet_room() -> None:
    c = crowds([], asyncio.Event())
    assert c.announces("room:lobby", 3) and not c.announces("room:lobby", 4)
    assert not c.announces("room:stage-1", 1)
    assert crowds([], asyncio.Event(), join_limit=0).announces("room:lobby", 1) is False


async def test_one_frame_per_room_per_interval_with_the_count_and_the_net_changes() -> None:
    sent: list[tuple[str, dict[str, object]]] = []
    arrived = asyncio.Event()
    c = crowds(sent, arrived)
    c.joined("room:a", "ann", 4)
    c.joined("room:a", "bob", 5)
    c.left("room:a", "bob", 4)  # came and went within the interval: not told
    c.left("room:a", "cat", 3)
    c.joined("room:a", "cat", 4)  # went and came back: not told either
    c.left("room:a", "dan", 3)
    c.joined("room:stage-1", "eve", 9)  # quiet: nothing
    async with asyncio.timeout(2):
        await arrived.wait()
    assert sent == [("room:a", {"type": "presence", "channel": "room:a", "count": 3,
                                "joined": ["ann"], "left": ["dan"]})]
    c.close()


async def test_a_frame_names_at_most_a_hundred_of_each() -> None:
    sent: list[tuple[str, dict[str, object]]] = []
    arrived = asyncio.Event()
    c = crowds(sent, arrived)
    for n in range(250):
        c.joined("room:a", f"user{n}", 4 + n)
    async with asyncio.timeout(2):
        await arrived.wait()
    frame = sent[0][1]
    assert frame["count"] == 253 and len(frame["joined"]) == NAMES_PER_FRAME  # type: ignore[arg-type]
    c.close()
