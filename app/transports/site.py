"""The demo page, /healthz and /metrics."""

from __future__ import annotations

from quart import Blueprint, Response, current_app

from app.hub.message import dumps
from app.transports.common import services

bp = Blueprint("site", __name__)


@bp.get("/")
async def index() -> Response:
    return await current_app.send_static_file("index.html")


@bp.get("/healthz")
async def healthz() -> Response:
    svc = services()
    ok = await svc.hub.backend.ping()
    body = {"status": "ok" if ok else "unavailable", "backend": svc.hub.backend.name,
            "connections": svc.connections.total(), "draining": svc.draining}
    response = Response(dumps(body), status=200 if ok else 503, content_type="application/json")
    if not ok:
        response.headers["Retry-After"] = "2"
    return response


@bp.get("/metrics")
async def metrics() -> Response:
    svc = services()
    gauges = {
        "connections": float(svc.connections.total()),
        "subscriptions": float(svc.hub.local_subscriptions()),
        "backend_up": 1.0 if await svc.hub.backend.ping() else 0.0,
    }
    text = svc.metrics.render(gauges, delivered=svc.hub.delivered)
    return Response(text, content_type="text/plain; version=0.0.4; charset=utf-8")
