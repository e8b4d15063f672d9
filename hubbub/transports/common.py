"""What every transport shares: the app's services, room names, origins, frames, publishing chat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from quart import current_app, request

from hubbub.auth import Authenticator, Lookup, Principal, authenticate
from hubbub.config import Settings
from hubbub.errors import (
    BadRequest,
    Forbidden,
    HookFailed,
    HubError,
    RateLimited,
    Refused,
    Unauthorized,
    Unavailable,
)
from hubbub.hub.backends.base import BackendUnavailable, Bucket, Throttled
from hubbub.hub.hub import ROOM_NAME, Hub, room_channel
from hubbub.hub.message import Message, dumps
from hubbub.limits import ConnectionLimits
from hubbub.metrics import Metrics, channel_kind
from hubbub.transports.hypercorn_bridge import Bridge
from hubbub.transports.socket_writer import WriteBatcher
from hubbub.transports.timer_wheel import TimerWheel, granularity_for

log = logging.getLogger(__name__)



class RequestLike(Protocol):
    """What an ``authenticate`` hook is given: Quart's request on the HTTP endpoints, a
    hubbub ``Request`` on the WebSocket and SSE ones and the chat POST (served on ASGI,
    asgi.py). Both have these, and ``.cookies`` is
    all Quart's session interface reads (``await app.session_interface.open_session(app, request)``)."""

    @property
    def headers(self) -> Lookup: ...
    @property
    def cookies(self) -> Lookup: ...
    @property
    def args(self) -> Lookup: ...
    @property
    def path(self) -> str: ...


AuthenticateHook = Callable[[RequestLike], Awaitable[Principal | None]]
PublishHook = Callable[[Principal, str, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class Services:
    """Everything a request handler needs: one set per Hubbub instance."""

    settings: Settings
    hub: Hub
    authenticator: Authenticator
    limits: ConnectionLimits
    metrics: Metrics
    writes: WriteBatcher = field(default_factory=WriteBatcher)  # direct socket writes, per turn
    wheel: TimerWheel = field(init=False)  # every live connection's heartbeat
    draining: bool = False
    authenticate_hook: AuthenticateHook | None = None
    publish_hook: PublishHook | None = None
    _shutdown_watch: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _synced_deliveries: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.wheel = TimerWheel(granularity_for(self.settings.heartbeat_interval_s))

    async def sync_metrics(self, *, ping: bool = False) -> None:
        """Moves what the hot path counts in integers into the metrics (and pings the backend)."""
        metrics, hub = self.metrics, self.hub
        delivered = hub.delivered()
        if delivered > self._synced_deliveries:
            metrics.deliveries.inc(delivered - self._synced_deliveries)
            self._synced_deliveries = delivered
        metrics.outbox_depth.set(hub.queued())
        retained = getattr(hub.backend, "retained", None)
        if retained is not None:
            for kind, count in retained().items():
                metrics.retained.labels(kind).set(count)
        if ping:
            started = time.perf_counter()
            up = await hub.backend.ping()
            metrics.backend_up.set(1 if up else 0)
            metrics.backend_rtt.set(time.perf_counter() - started)
            emitted = getattr(hub.backend, "emitted", None)
            if up and emitted is not None:
                with contextlib.suppress(BackendUnavailable):
                    for kind, count in (await emitted()).items():
                        metrics.emitted.labels(kind).set(count)

    def drain(self) -> None:
        """Refuses new connections and ends live ones (WebSocket 1012, SSE end with retry hint)."""
        self.draining = True
        self.hub.close_subscriptions()

    def watch_server_shutdown(self, bridge: Bridge | None) -> None:
        """Drains as soon as the server begins to shut down, however it was told to: a
        SIGTERM to Hypercorn's supervisor alone (docker stop, systemd) reaches no handler of
        ours, and Hypercorn would otherwise cut live connections at its graceful timeout."""
        if bridge is None or self._shutdown_watch is not None:
            return
        shutdown = bridge.server_shutdown()

        async def watch() -> None:
            await shutdown
            if not self.draining:
                log.info("server shutting down: closing connections so clients resume elsewhere")
                self.drain()

        self._shutdown_watch = asyncio.get_running_loop().create_task(watch())

    def stop_watching(self) -> None:
        if self._shutdown_watch is not None:
            self._shutdown_watch.cancel()


def services() -> Services:
    """The Services of the Hubbub instance whose blueprint serves this request."""
    return current_app.extensions["hubbub"][request.blueprints[-1]]  # type: ignore[no-any-return]


def new_connection_id() -> str:
    return secrets.token_hex(8)


def valid_room(name: str | None) -> str:
    if name is None or not ROOM_NAME.fullmatch(name):
        raise BadRequest("room must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return name


def check_origin(settings: Settings, headers: Lookup, host: str) -> None:
    """Browsers send Origin; others (curl, servers) do not and are allowed."""
    if not origin_allowed(settings, headers.get("Origin"), host):
        raise Forbidden("origin not allowed")


def origin_allowed(settings: Settings, origin: str | None, host: str) -> bool:
    """No Origin, one listed, any with a host under ``*``, or the same host as ``host``.

    An opaque origin (``null``: sandboxed frames, file: pages, some redirects) has no host,
    so it is never "same origin" nor covered by ``*``: only a literal ``null`` entry allows it.
    """
    if origin is None or (origin in settings.allowed_origins and origin != "*"):
        return True
    try:
        origin_host = urlsplit(origin).netloc
    except ValueError:  # e.g. "http://[": not an origin a browser sends
        return False
    if not origin_host:
        return False
    return "*" in settings.allowed_origins or origin_host == host  # same origin


def cors_headers(settings: Settings, origin: str | None) -> dict[str, str]:
    """CORS response headers for a cross-origin caller in ALLOWED_ORIGINS (same-origin needs none)."""
    # host="": no Host matches here, only the list does.
    if not origin or not settings.allowed_origins or not origin_allowed(settings, origin, ""):
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key, Last-Event-ID",
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Max-Age": "600"}


def refuse_while_draining(svc: Services) -> None:
    if svc.draining:
        raise Unavailable("server restarting: reconnect shortly", retry_after=2)


async def identify(svc: Services, request: RequestLike, *, tickets: bool) -> Principal | None:
    """The caller: the host app's own login first (the ``authenticate`` hook), then a bearer
    token, a ``token`` query parameter or (``tickets``: live endpoints) a ticket."""
    hook = svc.authenticate_hook
    if hook is not None:
        principal = await _call_hook("authenticate", hook, request)
        if principal is not None:
            if not isinstance(principal, Principal):
                log.error("the authenticate hook returned %r, not a Principal or None", type(principal))
                raise HookFailed("the server's authenticate hook failed")
            return principal
    try:
        return await authenticate(svc.authenticator, svc.hub.backend, request.headers, request.args,
                                  tickets=tickets)
    except Unauthorized as error:
        svc.metrics.auth_failure(error.detail, endpoint_of(request))
        raise


def endpoint_of(request: RequestLike) -> str:
    """The route, not the path (room names would make the label unbounded)."""
    rule = getattr(request, "url_rule", None)  # Quart's
    return str(rule.rule) if rule is not None else getattr(request, "route", request.path)


async def checked_by_hook(svc: Services, principal: Principal, channel: str,
                          message: dict[str, Any]) -> dict[str, Any]:
    """``message`` as the ``on_publish`` hook returns it (changed or not); Refused passes through."""
    hook = svc.publish_hook
    if hook is None:
        return message
    try:
        result = await _call_hook("on_publish", hook, principal, channel, message)
    except Refused:
        svc.metrics.dropped.labels("refused_by_hook").inc()
        raise
    if not isinstance(result, dict):
        log.error("the on_publish hook returned %r, not the message (a dict)", type(result))
        raise HookFailed("the server's on_publish hook failed")
    return result


async def _call_hook(name: str, hook: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Runs a hook of the host app: its HubErrors (Refused, Forbidden, …) reach the client as
    they are; anything else is logged once and becomes HookFailed, never a dead connection."""
    try:
        return await hook(*args)
    except HubError:
        raise
    except Exception:
        log.exception("the %s hook raised", name)
        raise HookFailed(f"the server's {name} hook failed") from None


async def require_principal(svc: Services, request: RequestLike, *, tickets: bool = False) -> Principal:
    """The caller, or Unauthorized; ``tickets``: a ticket is accepted (it opens one live stream)."""
    principal = await identify(svc, request, tickets=tickets)
    if principal is None:
        svc.metrics.auth_failure("required", endpoint_of(request))
        what = "a bearer token, a token or a ticket query parameter" if tickets else \
            "a bearer token (or a token query parameter)"
        raise Unauthorized(f"{what} is required")
    return principal


def welcome_frame(channel: str | list[str], user: str, recovered: bool | None, heartbeat_s: float) -> str:
    """``channel`` on the one-channel endpoints; ``channels``, the names asked for, on /ws and /sse."""
    return dumps({"type": "welcome", "channels" if isinstance(channel, list) else "channel": channel,
                  "user": user, "recovered": recovered, "heartbeat": heartbeat_s})


def ack_frame(message_id: str | None, ref: Any) -> str:
    return dumps({"type": "ack", "id": message_id, "ref": ref})


def publish_source(principal: Principal, origin: str | None = None) -> str:
    """The ``source`` label of a published message: websocket, http or api_key."""
    return "api_key" if principal.api_key else "websocket" if origin is not None else "http"


def count_published(svc: Services, principal: Principal, channel: str) -> None:
    svc.metrics.published.labels(publish_source(principal), channel_kind(channel)).inc()


async def take_token(svc: Services, bucket: Bucket, what: str) -> None:
    """Takes ``bucket.cost`` tokens, or refuses ``what`` with 429 / error rate_limited."""
    _check_cost(bucket)
    try:
        wait_s = await svc.hub.backend.take_token(bucket.key, bucket.rate_per_s, bucket.burst,
                                                  bucket.cost)
    except BackendUnavailable:
        raise Unavailable("the rate-limit backend is unreachable; retry later", retry_after=2) from None
    if wait_s > 0:
        raise _rate_limited(svc, what, wait_s)


def _check_cost(bucket: Bucket) -> None:
    if bucket.cost > bucket.burst:
        raise RateLimited(f"{bucket.cost} at once is more than the burst of {bucket.burst}: send fewer")


def _rate_limited(svc: Services, what: str, wait_s: float) -> RateLimited:
    svc.metrics.dropped.labels("rate_limited").inc()
    return RateLimited(f"slow down: next {what} allowed in {wait_s:.1f} s", retry_after=wait_s)


def chat_bucket(svc: Services, principal: Principal) -> tuple[Bucket, str]:
    """The chat rate of a user, shared by WebSocket and POST (and by demo-login publishers);
    an API key (a backend's bot) posts within its own limit. With what it limits, for errors."""
    if principal.api_key:
        return publisher_bucket(svc, principal)
    s = svc.settings
    return Bucket(f"rate:{principal.user}", s.rate_limit_per_second, s.rate_limit_burst), "message"


def publisher_bucket(svc: Services, principal: Principal, cost: int = 1) -> tuple[Bucket, str]:
    """The rate of a publisher (notifications, /api/publish; ``cost`` events at once): an API
    key's own limit, a token's (scope notify or publish), and the chat limit for a demo-login
    token, which is anyone's for the asking."""
    s = svc.settings
    if principal.api_key:
        return Bucket(f"publish:key:{principal.user}", s.api_key_rate_limit_per_second,
                      s.api_key_rate_limit_burst, cost), "publish"
    if principal.demo:
        return Bucket(f"rate:{principal.user}", s.rate_limit_per_second, s.rate_limit_burst,
                      cost), "message"
    return Bucket(f"publish:{principal.user}", s.publish_rate_limit_per_second,
                  s.publish_rate_limit_burst, cost), "publish"


async def limit_publisher(svc: Services, principal: Principal, cost: int = 1) -> None:
    await take_token(svc, *publisher_bucket(svc, principal, cost))


async def publish_limited(svc: Services, principal: Principal, channel: str, message: dict[str, Any],
                          limit: tuple[Bucket, str], *, sender: str | None,
                          origin: str | None = None) -> Message:
    """The rate limit, the ``on_publish`` hook and the publish. Without a hook the limit and
    the publish are one backend call (on Redis one round trip, not two); with one, the limit
    comes first, so a client over its rate never reaches the host app's hook."""
    bucket, what = limit
    hub = svc.hub
    try:
        if svc.publish_hook is None:
            _check_cost(bucket)
            try:
                return await hub.publish(channel, message, sender=sender, origin=origin, within=bucket)
            except Throttled as throttled:
                raise _rate_limited(svc, what, throttled.wait_s) from None
        await take_token(svc, bucket, what)
        message = await checked_by_hook(svc, principal, channel, message)
        return await hub.publish(channel, message, sender=sender, origin=origin)
    except BackendUnavailable:
        raise Unavailable("the message backend is unreachable; retry later", retry_after=2) from None


async def publish_chat(svc: Services, principal: Principal, room: str, text: str,
                       origin: str | None = None) -> Message:
    """Publishes a chat message within the user's rate limit (shared by WebSocket and POST)."""
    principal.require_room(room)
    message = await publish_limited(svc, principal, room_channel(room), {"type": "chat", "text": text},
                                    chat_bucket(svc, principal), sender=principal.user, origin=origin)
    svc.metrics.published.labels(publish_source(principal, origin), "room").inc()
    return message
