"""The demo page and browser client files, /healthz and /metrics."""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path

from quart import Blueprint, Response
from werkzeug.security import safe_join

from app.errors import NotFound
from app.hub.message import dumps
from app.transports.common import services

bp = Blueprint("site", __name__)
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"


async def _file(path: Path) -> Response:
    # Read whole in a thread: Quart's streamed file bodies leak the file when a
    # client hangs up mid-read. These files are small.
    try:
        body = await asyncio.to_thread(path.read_bytes)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound(f"no file {path.name!r}") from None
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type.endswith("javascript"):
        content_type += "; charset=utf-8"
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-cache"})


@bp.get("/")
async def index() -> Response:
    return await _file(STATIC_DIR / "index.html")


@bp.get("/static/<path:filename>")
async def static_file(filename: str) -> Response:
    joined = safe_join(str(STATIC_DIR), filename)
    if joined is None:
        raise NotFound(f"no file {filename!r}")
    return await _file(Path(joined))


@bp.get("/healthz")
async def healthz() -> Response:
    svc = services()
    ok = await svc.hub.backend.ping() and not svc.draining  # draining: take me out of rotation
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
