"""What every transport shares: the app's services, room names, origins, frames, publishing chat."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from quart import current_app

from app.auth import Authenticator, Lookup, Principal, authenticate
from app.config import Settings
from app.errors import BadRequest, Forbidden, RateLimited, Unauthorized, Unavailable
from app.hub.backends.base import BackendUnavailable
from app.hub.hub import Hub, room_channel
from app.hub.message import Message, dumps
from app.limits import ConnectionLimiter
from app.observability import Metrics
from app.transports.connection_control import WriteBatcher

_ROOM_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass
class Services:
    """Everything a request handler needs, built once by create_app()."""

    settings: Settings
    hub: Hub
    authenticator: Authenticator
    connections: ConnectionLimiter
    metrics: Metrics = field(default_factory=Metrics)
    writes: WriteBatcher = field(default_factory=WriteBatcher)  # direct socket writes, per turn
    draining: bool = False


def services() -> Services:
    return current_app.extensions["hubbub"]  # type: ignore[no-any-return]


def new_connection_id() -> str:
    return secrets.token_hex(8)


def valid_room(name: str | None) -> str:
    if name is None or not _ROOM_NAME.fullmatch(name):
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
    if not origin or not settings.allowed_origins or not origin_allowed(settings, origin, ""):
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, Last-Event-ID",
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Max-Age": "600"}


def admit(svc: Services, principal: Principal) -> None:
    """Refuses a new live connection while shutting down or past the user's limit."""
    if svc.draining:
        raise Unavailable("server restarting: reconnect shortly", retry_after=2)
    svc.connections.check(principal.user)


async def require_principal(svc: Services, headers: Lookup, args: Lookup) -> Principal:
    principal = await authenticate(svc.authenticator, svc.hub.backend, headers, args)
    if principal is None:
        raise Unauthorized("a bearer token, a token or a ticket query parameter is required")
    return principal


def welcome_frame(channel: str, user: str, recovered: bool | None, heartbeat_s: float) -> str:
    return dumps({"type": "welcome", "channel": channel, "user": user,
                  "recovered": recovered, "heartbeat": heartbeat_s})


def ack_frame(message_id: str | None, ref: Any) -> str:
    return dumps({"type": "ack", "id": message_id, "ref": ref})


async def publish_chat(svc: Services, principal: Principal, room: str, text: str,
                       origin: str | None = None) -> Message:
    """Publishes a chat message within the user's rate limit (shared by WebSocket and POST)."""
    principal.require_room(room)
    try:
        wait_s = await svc.hub.backend.take_token(
            f"rate:{principal.user}", svc.settings.rate_limit_per_second,
            svc.settings.rate_limit_burst,
        )
        if wait_s > 0:
            raise RateLimited(f"slow down: next message allowed in {wait_s:.1f} s",
                              retry_after=wait_s)
        message = await svc.hub.publish(
            room_channel(room), {"type": "chat", "text": text},
            sender=principal.user, origin=origin,
        )
    except BackendUnavailable:
        raise Unavailable("the message backend is unreachable; retry later", retry_after=2) from None
    svc.metrics.published += 1
    return message
