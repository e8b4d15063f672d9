"""The demo page and browser client files, /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import hmac
import mimetypes
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, request
from werkzeug.security import safe_join

from hubbub._version import __version__
from hubbub.auth import bearer_token
from hubbub.errors import NotFound, Unauthorized
from hubbub.hub.message import dumps
from hubbub.protocol import STATIC_DIR
from hubbub.transports.common import services

bp = Blueprint("site", __name__)


# The demo page loads its own modules and stylesheet and talks to its own origin only
# (CSP Level 3: 'self' also matches ws: and wss: on the same host); nobody may frame it.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers without CSP 2
}


def _not_found(name: str) -> NotFound:
    return NotFound(f"no file {name[:64]!r}" + ("…" if len(name) > 64 else ""))


async def _file(path: Path) -> Response:
    # Read whole in a thread: Quart's streamed file bodies leak the file when a
    # client hangs up mid-read. These files are small.
    try:
        body = await asyncio.to_thread(path.read_bytes)
    except (OSError, ValueError):
        # Whatever the OS refuses is a file we do not have: missing, a directory, a name over
        # NAME_MAX (ENAMETOOLONG), a symlink loop; ValueError: a NUL in the name.
        raise _not_found(path.name) from None
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type.endswith("javascript"):
        content_type += "; charset=utf-8"
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-cache"})


@bp.get("/")
async def index() -> Response:
    return await page(STATIC_DIR / "index.html")


async def page(path: Path) -> Response:
    """An HTML page of hubbub's own, under its Content-Security-Policy."""
    response = await _file(path)
    response.headers.update(_PAGE_HEADERS)
    return response


@bp.get("/static/<path:filename>")
async def static_file(filename: str) -> Response:
    joined = safe_join(str(STATIC_DIR), filename)
    if joined is None:
        raise _not_found(filename)
    return await _file(Path(joined))


@bp.get("/healthz")
async def healthz() -> Response:
    """Liveness: 200 while this process serves (restarting it would not bring Redis back);
    what it sees of its backend and whether it drains are in the body."""
    svc = services()
    body = {"status": "ok", "version": __version__, "backend": svc.hub.backend.name,
            "backend_up": await svc.hub.backend.ping(), "connections": svc.limits.total,
            "draining": svc.draining}
    return Response(dumps(body), content_type="application/json")


@bp.get("/readyz")
async def readyz() -> Response:
    """Readiness: 503 with Retry-After while draining or while the backend is unreachable,
    so a load balancer sends new clients elsewhere."""
    svc = services()
    backend_up = await svc.hub.backend.ping()
    ready = backend_up and not svc.draining
    body = {"status": "ready" if ready else "unavailable", "version": __version__,
            "backend": svc.hub.backend.name, "backend_up": backend_up, "draining": svc.draining}
    response = Response(dumps(body), status=200 if ready else 503, content_type="application/json")
    if not ready:
        response.headers["Retry-After"] = "2"
    return response


@bp.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format; with METRICS_TOKEN, only for ``Authorization: Bearer TOKEN``."""
    svc = services()
    token = svc.settings.metrics_token
    if token and not hmac.compare_digest((bearer_token(request.headers) or "").encode(), token.encode()):
        raise Unauthorized("/metrics needs the bearer token METRICS_TOKEN")
    await svc.sync_metrics()  # this worker's latest; the others' within a second
    return Response(svc.metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
