"""hubbub inside a Quart app: ``Hubbub(app, url_prefix="/rt", settings=Settings(...))``.

Every endpoint lives under the prefix, the live ones included, and below the
``root_path`` of an outer mount. The host app is left alone: its routes, error pages,
WebSockets (permessage-deflate included), signals, logging and garbage collector stay
as they were. Serving as a whole process (signals, GC, logging, file descriptors) is the
standalone server's business (the ``app`` package of the repository).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any

from prometheus_client.multiprocess import mark_process_dead
from quart import Blueprint, Quart, Response, request
from werkzeug.exceptions import HTTPException

from hubbub._version import __version__
from hubbub.auth import Authenticator
from hubbub.config import Settings
from hubbub.errors import HubError
from hubbub.hub.backends.base import Backend
from hubbub.hub.backends.memory import MemoryBackend
from hubbub.hub.hub import Hub
from hubbub.hub.message import dumps
from hubbub.limits import ConnectionLimits
from hubbub.metrics import Metrics, channel_kind, multiprocess
from hubbub.protocol import ERROR_STATUS
from hubbub.transports import admin, chat_post, http, hypercorn_bridge, publishing, site, sse, websocket
from hubbub.transports.asgi import LiveRouter
from hubbub.transports.common import AuthenticateHook, PublishHook, Services, cors_headers

log = logging.getLogger("hubbub")

METRICS_SYNC_S = 1.0  # deliveries and queue depths reach the metrics at most this late
PING_EVERY_SYNCS = 5  # the backend is pinged every 5 s for hubbub_backend_up and its round trip

# werkzeug's own errors, as JSON: the first code of protocol.json with their status.
HTTP_ERROR_CODES = {status: code for code, status in reversed(ERROR_STATUS.items())}


def build_backend(settings: Settings) -> Backend:
    if settings.redis_url:
        from hubbub.hub.backends.redis import RedisBackend

        return RedisBackend(settings.redis_url, prefix=settings.redis_prefix,
                            history_size=settings.history_size,
                            history_ttl_s=settings.history_ttl_s)
    return MemoryBackend(history_size=settings.history_size, history_ttl_s=settings.history_ttl_s)


def json_error(status: int, detail: str) -> Response:
    """The JSON error body of docs/api.md for a status werkzeug raised."""
    body = {"error": HTTP_ERROR_CODES.get(status, "internal_error" if status >= 500 else "error"),
            "detail": detail}
    return Response(dumps(body), status=status, content_type="application/json")


class Hubbub:
    """One hub and its endpoints. Several instances may live in one process and one app,
    each with its own prefix, settings and backend."""

    def __init__(self, app: Quart | None = None, *, url_prefix: str = "",
                 settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        s = self.settings
        self.hub = Hub(build_backend(s), outbox_size=s.outbox_size, presence_join_limit=s.presence_join_limit,
                       presence_interval_s=s.presence_interval_s, quiet_rooms=s.quiet_rooms)
        metrics = Metrics()
        self.hub.observe_latency = metrics.publish_to_socket.observe
        limits = ConnectionLimits(self.hub.backend, max_per_user=self.settings.max_connections_per_user,
                                  max_total=self.settings.max_connections,
                                  on_refused=lambda reason: metrics.refused.labels(reason).inc())
        self.services = Services(settings=self.settings, hub=self.hub, metrics=metrics,
                                 authenticator=Authenticator(self.settings), limits=limits)
        self._syncing: asyncio.Task[None] | None = None
        self.url_prefix = ""
        if app is not None:
            self.init_app(app, url_prefix=url_prefix)

    def init_app(self, app: Quart, *, url_prefix: str = "") -> None:
        """Mounts the endpoints on ``app`` under ``url_prefix`` ("" or "/rt")."""
        prefix = "/" + url_prefix.strip("/") if url_prefix.strip("/") else ""
        name = "hubbub" + prefix.replace("/", "_").replace("-", "_").replace(".", "_")
        registry: dict[str, Services] = app.extensions.setdefault("hubbub", {})
        if name in registry:
            raise ValueError(f"a Hubbub is already mounted at {prefix or '/'!r} on this app")
        registry[name] = self.services
        self.url_prefix = prefix
        app.register_blueprint(self._blueprint(), url_prefix=prefix or None, name=name)
        app.asgi_app = LiveRouter(  # type: ignore[method-assign,assignment]
            app.asgi_app, self.services, prefix,
            websocket={"/ws/chat": websocket.chat, "/ws/notifications": websocket.notifications,
                       "/ws": websocket.channels, "/ws/echo": websocket.echo},
            sse={"/sse/chat": sse.chat, "/sse/notifications": sse.notifications, "/sse": sse.channels},
            messages=chat_post.messages,
        )
        app.before_serving(self._start)
        app.after_serving(self._stop)

    def _blueprint(self) -> Blueprint:
        """The HTTP endpoints with their JSON errors and CORS, for this instance's routes only."""
        parent = Blueprint("hubbub", __name__)
        parent.register_blueprint(http.bp)
        parent.register_blueprint(publishing.bp)
        parent.register_blueprint(admin.bp)
        parent.register_blueprint(site.bp)
        settings = self.settings

        @parent.errorhandler(HubError)
        async def hub_error(error: HubError) -> Response:
            return error.response()

        @parent.errorhandler(HTTPException)
        async def http_error(error: HTTPException) -> Response:
            return json_error(error.code or 500, error.description or "")

        @parent.errorhandler(Exception)
        async def internal_error(error: Exception) -> Response:
            log.exception("unhandled error in hubbub's %s", type(error).__name__)
            return json_error(500, "unexpected server error")

        @parent.after_request
        async def headers(response: Response) -> Response:
            response.headers.update(cors_headers(settings, request.headers.get("Origin")))
            response.headers["X-Content-Type-Options"] = "nosniff"
            await http.finish_reading_body(response, settings.max_message_bytes)
            return response

        return parent

    # -- hooks --------------------------------------------------------------------------

    def authenticate(self, hook: AuthenticateHook) -> AuthenticateHook:
        """Decorator: ``async def hook(request) -> Principal | None``, the host app's own login.

        Asked first on every endpoint (a session cookie, say); None falls back to a JWT or a
        ticket. ``request`` has ``headers``, ``cookies``, ``args`` and ``path``: Quart's own
        session reads only ``cookies``, so ``await app.session_interface.open_session(app,
        request)`` works on every endpoint, WebSocket and SSE included.
        """
        self.services.authenticate_hook = hook
        return hook

    def on_publish(self, hook: PublishHook) -> PublishHook:
        """Decorator: ``async def hook(principal, channel, message) -> message``, called for
        every message a client publishes (chat over WebSocket or POST, notifications over POST)
        before it is stamped. Return it, changed or not; raise ``hubbub.Refused("why")`` to
        refuse it. Not called for ``publish``/``notify``/``broadcast`` from server code.
        """
        self.services.publish_hook = hook
        return hook

    # -- server-side publishing -----------------------------------------------------------

    async def publish(self, channel: str, message: dict[str, Any], *, sender: str | None = None) -> str:
        """Publishes ``message`` to ``channel`` (``room:NAME``, ``user:ID`` or ``broadcast``) on
        every process; its id. ValueError for a malformed channel or a message not a dict."""
        published = await self.hub.publish(channel, message, sender=sender)
        self.services.metrics.published.labels("server", channel_kind(channel)).inc()
        return published.id or ""

    async def notify(self, user: str, data: Any) -> str:
        """A notification to every connection of ``user``; its id."""
        return await self.publish(f"user:{user}", {"type": "notification", "data": data})

    async def broadcast(self, data: Any) -> str:
        """A notification to every notifications subscriber; its id."""
        return await self.publish("broadcast", {"type": "notification", "data": data})

    # -- metrics ----------------------------------------------------------------------------

    async def _sync_metrics_forever(self) -> None:
        for tick in itertools.count():
            try:
                await self.services.sync_metrics(ping=tick % PING_EVERY_SYNCS == 0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("metrics sync failed")
            await asyncio.sleep(METRICS_SYNC_S)

    # -- life -----------------------------------------------------------------------------

    def drain(self) -> None:
        """Refuses new live connections and ends the others (WebSocket 1012, SSE end with a
        retry hint), so clients resume elsewhere: what a graceful shutdown starts with."""
        self.services.drain()

    async def _start(self) -> None:
        await self.hub.start()
        fast, why = hypercorn_bridge.status()
        metrics = self.services.metrics
        metrics.build_info.labels(__version__).set(1)
        metrics.fast_path.set(1 if fast else 0)
        metrics.max_connections.set(self.services.limits.max_total)
        self._syncing = asyncio.get_running_loop().create_task(self._sync_metrics_forever())
        if not fast:
            log.warning("fast path off, writing through plain ASGI (slower): %s", why)
        if self.settings.ephemeral_secret:
            demo = "; demo login is on" if self.settings.demo_login_enabled else ""
            log.warning("JWT_SECRET is not set: tokens are signed with an ephemeral secret and die "
                        "with this process%s", demo)
        log.info("hubbub ready at %s: backend=%s, max connections=%d, fast path %s (%s)",
                 self.url_prefix or "/", self.hub.backend.name, self.services.limits.max_total,
                 "on" if fast else "off", why)

    async def _stop(self) -> None:
        if self._syncing is not None:
            self._syncing.cancel()
        if multiprocess():  # this worker's live gauges leave the sums with it
            mark_process_dead(os.getpid())
        self.services.stop_watching()
        self.services.drain()
        await self.hub.close()
