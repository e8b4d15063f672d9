"""hubbub: one broadcast hub behind WebSocket, Server-Sent Events and HTTP.

``create_app()`` builds the Quart app: settings, backend, hub, transports.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from app.auth import Authenticator
from app.config import Settings
from app.errors import HubError
from app.hub.backends.base import Backend
from app.hub.backends.memory import MemoryBackend
from app.hub.hub import Hub
from app.hub.message import dumps
from app.lifecycle import install_drain_on_signals, tune_garbage_collector, warn_if_hub_split
from app.limits import ConnectionLimits, raise_fd_limit
from app.observability import configure_logging, quiet_accept_failures
from app.transports import http, hypercorn_bridge, site, sse, websocket
from app.transports.asgi import LiveRouter
from app.transports.common import Services, cors_headers

__all__ = ["create_app", "Hub"]

log = logging.getLogger("app")


def build_backend(settings: Settings) -> Backend:
    if settings.redis_url:
        from app.hub.backends.redis import RedisBackend

        return RedisBackend(settings.redis_url, prefix=settings.redis_prefix,
                            history_size=settings.history_size,
                            history_ttl_s=settings.history_ttl_s)
    return MemoryBackend(history_size=settings.history_size, history_ttl_s=settings.history_ttl_s)


def create_app(settings: Settings | None = None, *, handle_signals: bool = True) -> Quart:
    """The app. ``handle_signals=False`` leaves SIGTERM/SIGINT alone (embedding, tests)."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    warn_if_hub_split(settings.redis_url)
    if handle_signals:  # serving as the process: each connection is a file descriptor
        raise_fd_limit()
        quiet_accept_failures()
    app = Quart(__name__, static_folder=None)  # static files: app/transports/site.py
    app.config["MAX_CONTENT_LENGTH"] = settings.max_message_bytes
    hub = Hub(build_backend(settings), outbox_size=settings.outbox_size)
    limits = ConnectionLimits(hub.backend, max_per_user=settings.max_connections_per_user,
                              max_total=settings.max_connections)
    svc = Services(settings=settings, hub=hub, authenticator=Authenticator(settings), limits=limits)
    app.extensions["hubbub"] = svc
    app.hub = hub  # type: ignore[attr-defined]  # for server-side code: app.hub.notify(...)
    for blueprint in (http.bp, site.bp):
        app.register_blueprint(blueprint)
    app.asgi_app = LiveRouter(  # type: ignore[method-assign,assignment]
        app.asgi_app, svc,
        websocket={"/ws/chat": websocket.chat, "/ws/notifications": websocket.notifications,
                   "/ws/echo": websocket.echo},
        sse={"/sse/chat": sse.chat, "/sse/notifications": sse.notifications},
    )
    _register_errors(app)
    _register_cors(app, settings)
    _register_security_headers(app)

    @app.before_serving
    async def start() -> None:
        await hub.start()
        if handle_signals:  # serving as the process, not embedded: tune it as a server
            install_drain_on_signals(asyncio.get_running_loop(), svc.drain)
            tune_garbage_collector()
        if settings.ephemeral_secret:
            log.warning("JWT_SECRET is not set: using an ephemeral secret; demo login is on "
                        "and tokens die with this process")
        fast, why = hypercorn_bridge.status()
        if not fast:
            log.warning("fast path off, writing through plain ASGI (slower): %s", why)
        log.info("hubbub ready: backend=%s, max connections=%d, fast path %s (%s)", hub.backend.name,
                 limits.max_total, "on" if fast else "off", why)

    @app.after_serving
    async def stop() -> None:
        svc.stop_watching()
        svc.drain()
        await hub.close()

    return app


def _register_errors(app: Quart) -> None:
    @app.before_request
    async def relative_redirect() -> Response | None:
        """werkzeug's slash redirects (``/api//rooms`` → ``/api/rooms``) are RoutingExceptions,
        which never reach an error handler, and their Location names the client's Host header:
        answer them here with a path-only Location, so a forged Host cannot point off-site."""
        redirect = request.routing_exception
        if not isinstance(redirect, RequestRedirect):
            return None
        target = urlsplit(redirect.new_url)
        # One leading slash: browsers read //host and /\host as another host.
        location = "/" + target.path.lstrip("/\\") + (f"?{target.query}" if target.query else "")
        return Response("", status=redirect.code, headers={"Location": location})

    @app.errorhandler(HubError)
    async def hub_error(error: HubError) -> Response:
        return error.response()

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                 413: "too_large", 415: "unsupported_media_type"}
        status = error.code or 500
        body = {"error": codes.get(status, "error"), "detail": error.description or ""}
        return Response(dumps(body), status=status, content_type="application/json")

    @app.errorhandler(Exception)
    async def internal_error(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        body = {"error": "internal_error", "detail": "unexpected server error"}
        return Response(dumps(body), status=500, content_type="application/json")


def _register_cors(app: Quart, settings: Settings) -> None:
    """CORS on the HTTP API for ALLOWED_ORIGINS (same-origin needs none)."""

    @app.after_request
    async def cors(response: Response) -> Response:
        response.headers.update(cors_headers(settings, request.headers.get("Origin")))
        return response


def _register_security_headers(app: Quart) -> None:
    """``nosniff`` on every Quart response (errors included): a body echoing client input is
    read only as its declared type. The live endpoints set it on ASGI (asgi.py, sse.py)."""

    @app.after_request
    async def security_headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
