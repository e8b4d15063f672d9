"""/admin: a live operator page (off unless ADMIN_TOKEN is set), fed by hubbub's own SSE.

``GET /admin`` is the page (static/admin.html); ``GET /admin/stream?token=ADMIN_TOKEN``
sends a snapshot a second, read from the same metrics /metrics exposes, so with several
workers the page shows their sum. The busiest rooms are this worker's.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from quart import Blueprint, Response, request

from hubbub.auth import bearer_token
from hubbub.errors import NotFound, Unauthorized
from hubbub.hub.message import dumps
from hubbub.transports.common import Services, services
from hubbub.transports.site import STATIC_DIR, page

bp = Blueprint("admin", __name__)

SNAPSHOT_EVERY_S = 1.0
BUSIEST_ROOMS = 8


def _require_admin(svc: Services) -> None:
    token = svc.settings.admin_token
    if not token:
        raise NotFound("the operator page is off: set ADMIN_TOKEN")
    given = bearer_token(request.headers) or request.args.get("token") or ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("the operator page needs ADMIN_TOKEN")


@bp.get("/admin")
async def admin_page() -> Response:
    svc = services()
    if not svc.settings.admin_token:
        raise NotFound("the operator page is off: set ADMIN_TOKEN")
    return await page(STATIC_DIR / "admin.html")  # it asks for the token itself


@bp.get("/admin/stream")
async def admin_stream() -> Response:
    svc = services()
    _require_admin(svc)

    async def events() -> AsyncIterator[bytes]:
        while True:
            yield f"data: {dumps(await snapshot(svc))}\n\n".encode()
            await asyncio.sleep(SNAPSHOT_EVERY_S)

    response = Response(events(), content_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.timeout = None  # a stream, not a request: no framework timeout
    return response


async def snapshot(svc: Services) -> dict[str, Any]:
    """What the page shows, from the metrics (every worker's, summed) and this worker's hub."""
    await svc.sync_metrics()
    totals: dict[str, float] = defaultdict(float)
    connections: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(svc.metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == "hubbub_connections":
                connections[sample.labels["transport"]] += sample.value
            elif sample.name == "hubbub_dropped_total" and sample.labels.get("reason") == "slow_consumer":
                totals["slow_consumers"] += sample.value
            elif sample.name in ("hubbub_messages_published_total", "hubbub_deliveries_total",
                                 "hubbub_backend_up", "hubbub_backend_rtt_seconds", "hubbub_max_connections"):
                totals[sample.name] += sample.value
    rooms = sorted(((channel.partition(":")[2], count) for channel, count in svc.hub.subscriber_counts()
                    if channel.startswith("room:")), key=lambda room: -room[1])[:BUSIEST_ROOMS]
    return {
        "connections": {"websocket": connections["websocket"], "sse": connections["sse"]},
        "max_connections": totals["hubbub_max_connections"],
        "published": totals["hubbub_messages_published_total"],
        "deliveries": totals["hubbub_deliveries_total"],
        "slow_consumers": totals["slow_consumers"],
        "backend": {"name": svc.hub.backend.name, "up": bool(totals["hubbub_backend_up"]),
                    "rtt_ms": round(totals["hubbub_backend_rtt_seconds"] * 1000, 2)},
        "busiest_rooms": [{"room": room, "subscribers": n} for room, n in rooms],
        "draining": svc.draining,
    }
