"""The demo page and browser client files, /healthz and /metrics."""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path

from quart import Blueprint, Response
from werkzeug.security import safe_join

from hubbub._version import __version__
from hubbub.errors import NotFound
from hubbub.hub.message import dumps
from hubbub.transports import hypercorn_bridge
from hubbub.transports.common import services

bp = Blueprint("site", __name__)
def _static_dir() -> Path:
    """The browser client and demo files: inside the package when installed from a wheel,
    at the top of the repository in a checkout (an editable install)."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "static"
    return packaged if packaged.is_dir() else package.parent / "static"


STATIC_DIR = _static_dir()


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
    response = await _file(STATIC_DIR / "index.html")
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
    svc = services()
    ok = await svc.hub.backend.ping() and not svc.draining  # draining: take me out of rotation
    body = {"status": "ok" if ok else "unavailable", "version": __version__,
            "backend": svc.hub.backend.name, "connections": svc.limits.total, "draining": svc.draining}
    response = Response(dumps(body), status=200 if ok else 503, content_type="application/json")
    if not ok:
        response.headers["Retry-After"] = "2"
    return response


@bp.get("/metrics")
async def metrics() -> Response:
    svc = services()
    gauges = {
        "connections": float(svc.limits.total),
        "subscriptions": float(svc.hub.local_subscriptions()),
        "backend_up": 1.0 if await svc.hub.backend.ping() else 0.0,
    }
    # What the backend holds in this process (memory only; Redis expires its keys itself):
    # hubbub_retained_channels and the like must fall back once traffic stops.
    retained = getattr(svc.hub.backend, "retained", None)
    if retained is not None:
        gauges.update((f"retained_{kind}", float(n)) for kind, n in retained().items())
    gauges["max_connections"] = float(svc.limits.max_total)
    gauges["fast_path"] = 1.0 if hypercorn_bridge.status()[0] else 0.0
    text = svc.metrics.render(gauges, delivered=svc.hub.delivered,
                              connections_refused=svc.limits.refused)
    return Response(text, content_type="text/plain; version=0.0.4; charset=utf-8")
