"""Nothing unbounded: what 10,000 rooms that went quiet leave behind is freed after HISTORY_TTL.

A real server in-process (so its memory is this process's); rooms are published to straight
through ``server.hub`` to keep it fast, plus a few POSTs for the rate-limit buckets.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import LiveServer, ServerFactory

HISTORY_TTL_S = 2.0
ROOMS = 10_000
# Histories are freed within a sweep (TTL / 2) after the TTL, their tombstones a TTL later.
FREED_WITHIN_S = 4 * HISTORY_TTL_S + 5


async def gauges(client: httpx.AsyncClient) -> dict[str, float]:
    reply = await client.get("/metrics")
    assert reply.status_code == 200
    return {name: float(value) for name, _, value in
            (line.partition(" ") for line in reply.text.splitlines() if not line.startswith("#"))}


async def retained_falls_to_zero(client: httpx.AsyncClient, *kinds: str) -> dict[str, float]:
    """Polls /metrics (nothing announces an expiry) until every ``hubbub_retained_<kind>`` is 0."""
    async with asyncio.timeout(FREED_WITHIN_S):
        while True:
            values = await gauges(client)
            if all(values[f"hubbub_retained_{kind}"] == 0 for kind in kinds):
                return values
            await asyncio.sleep(0.2)


async def publish_to_rooms(server: LiveServer, prefix: str) -> None:
    for i in range(ROOMS):
        await server.hub.publish(f"room:{prefix}{i}", {"type": "chat", "text": "x"}, sender="u")


async def test_quiet_rooms_are_freed_after_the_history_ttl(server_factory: ServerFactory) -> None:
    server = await server_factory({"HISTORY_TTL": str(HISTORY_TTL_S), "RATE_LIMIT_PER_SECOND": "5"})
    async with server.http() as client:
        for user in ("ann", "bob", "cat"):
            reply = await client.post("/api/rooms/lobby/messages", json={"text": "hi"},
                                      headers={"Authorization": f"Bearer {server.token(user)}"})
            assert reply.status_code == 202
        await publish_to_rooms(server, "r")

        busy = await gauges(client)
        assert busy["hubbub_retained_channels"] == ROOMS + 1  # and the lobby
        assert busy["hubbub_retained_buckets"] >= 3

        freed = await retained_falls_to_zero(client, "channels", "buckets")
        assert freed["hubbub_retained_tombstones"] > 0  # what was lost is still known a while
        await retained_falls_to_zero(client, "channels", "tombstones", "buckets")
