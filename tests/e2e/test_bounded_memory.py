"""Nothing unbounded: what 10,000 rooms that went quiet leave behind is freed after HISTORY_TTL.

A real server in-process (so its memory is this process's); rooms are published to straight
through ``server.hub`` to keep it fast, plus a few POSTs for the rate-limit buckets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from tests.conftest import LiveServer, ServerFactory
from tests.e2e.clients import read_metrics

HISTORY_TTL_S = 2.0
ROOMS = 10_000
# Histories are freed within a sweep (TTL / 2) after the TTL, their tombstones a TTL later.
FREED_WITHIN_S = 4 * HISTORY_TTL_S + 5


async def retained(client: httpx.AsyncClient) -> dict[str, float]:
    """``hubbub_retained`` by kind (synced to the metrics every second)."""
    return {dict(labels)["kind"]: value for (name, labels), value in (await read_metrics(client)).items()
            if name == "hubbub_retained"}


async def retained_reaches(client: httpx.AsyncClient, wanted: Callable[[dict[str, float]], bool],
                           timeout: float = FREED_WITHIN_S) -> dict[str, float]:
    """Polls /metrics (nothing announces an expiry) until ``wanted(retained)`` holds."""
    async with asyncio.timeout(timeout):
        while True:
            values = await retained(client)
            if values and wanted(values):
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

        busy = await retained_reaches(client, lambda r: r["channels"] == ROOMS + 1, timeout=5)  # + lobby
        assert busy["buckets"] >= 3

        freed = await retained_reaches(client, lambda r: r["channels"] == r["buckets"] == 0)
        assert freed["tombstones"] > 0  # what was lost is still known a while
        await retained_reaches(client, lambda r: r["channels"] == r["tombstones"] == r["buckets"] == 0)
