"""Plain HTTP: room history, presence, notifications, tickets, demo login (chat POSTs: chat_post.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from quart import Blueprint, Response, g, request

from hubbub.auth import Principal, issue_ticket
from hubbub.errors import BadRequest, Forbidden, TooLarge, Unauthorized, Unavailable
from hubbub.hub.backends.base import BackendUnavailable, Bucket
from hubbub.hub.hub import BROADCAST, room_channel, user_channel
from hubbub.hub.message import Cursor, dumps
from hubbub.transports.common import (
    Services,
    count_published,
    publish_limited,
    publisher_bucket,
    require_principal,
    services,
    take_token,
    valid_room,
)
from hubbub.transports.idempotency import idempotent
from hubbub.transports.inbound import json_object, text_from_body

bp = Blueprint("http", __name__)

DEFAULT_HISTORY_LIMIT = 100
MAX_HISTORY_LIMIT = 10_000  # asked for more: clamped to HISTORY_SIZE anyway
TICKETS_PER_S = 1.0  # minting per user; the burst is twice MAX_CONNECTIONS_PER_USER
_DEMO_USER_MAX = 64
# Over HTTP/1.1, a response that ends before the request's body has arrived whole makes
# Hypercorn close the connection once the response is out, without saying so in it: a
# client that reuses the connection then sees it drop under its next request. A refusal
# comes before the body is read, so the rest is read first, for this long at most.
BODY_DRAIN_S = 1.0


def _json(value: object, status: int = 200) -> Response:
    return Response(dumps(value), status=status, content_type="application/json")


async def request_body(svc: Services) -> bytes:
    """The request body, refused past MAX_MESSAGE_BYTES before it is read whole (kept: the
    Idempotency-Key check reads it too)."""
    limit = svc.settings.max_message_bytes
    if (request.content_length or 0) > limit:
        svc.metrics.dropped.labels("too_big").inc()
        raise TooLarge(f"bodies are limited to {limit} bytes")
    request.max_content_length = limit
    try:
        data = await request.get_data(cache=True, as_text=False)
        g.hubbub_body_read = True  # finish_reading_body has nothing left to do
        return data if isinstance(data, bytes) else data.encode()
    except Exception as exc:  # werkzeug's RequestEntityTooLarge for chunked bodies
        if getattr(exc, "code", None) == 413:
            svc.metrics.dropped.labels("too_big").inc()
            raise TooLarge(f"bodies are limited to {limit} bytes") from None
        raise


async def finish_reading_body(response: Response, limit: int) -> None:
    """Reads what is left of the request's body (up to ``limit`` bytes, ``BODY_DRAIN_S``), so
    the connection can serve the next request; otherwise the response says ``Connection: close``."""
    if getattr(g, "hubbub_body_read", False) or request.http_version not in ("1.0", "1.1"):
        return  # read whole already (every accepted POST); HTTP/2 ends the stream alone
    chunked = "chunked" in (request.headers.get("Transfer-Encoding") or "").lower()
    if not request.content_length and not chunked:
        return
    if (request.content_length or 0) > limit:
        response.headers["Connection"] = "close"
        return
    request.max_content_length = limit
    try:
        async with asyncio.timeout(BODY_DRAIN_S):
            await request.get_data(cache=True, as_text=False)
    except Exception:  # too slow, too big once dechunked, or the peer gone
        response.headers["Connection"] = "close"


async def current_principal(svc: Services) -> Principal:
    """The caller (once per request: the Idempotency-Key check may have asked already)."""
    principal = getattr(g, "hubbub_principal", None)
    if principal is None:
        principal = g.hubbub_principal = await require_principal(svc, request)
    return principal  # type: ignore[no-any-return]


@bp.get("/api/rooms/<room>/messages")
async def get_messages(room: str) -> Response:
    svc = services()
    room = valid_room(room)
    principal = await current_principal(svc)
    principal.require_room(room)
    raw_limit = request.args.get("limit", str(DEFAULT_HISTORY_LIMIT))
    # isascii() and the length: str.isdigit() also accepts "²" and 5000 digits, which int() refuses.
    if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 9) \
            or not 1 <= int(raw_limit) <= MAX_HISTORY_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
    limit = min(int(raw_limit), svc.settings.history_size)  # no more is kept anyway
    try:
        history = await svc.hub.backend.history(
            [room_channel(room)], Cursor.parse(request.args.get("since")), limit
        )
    except BackendUnavailable:
        raise Unavailable("the message backend is unreachable", retry_after=2) from None
    # Each message is already JSON text: splice, do not decode and re-encode.
    body = ",".join(m.json for m in history.messages)
    recovered = "true" if history.recovered else "false"
    return Response(f'{{"messages":[{body}],"recovered":{recovered}}}',
                    content_type="application/json")


@bp.get("/api/rooms/<room>/presence")
async def get_presence(room: str) -> Response:
    svc = services()
    room = valid_room(room)
    principal = await current_principal(svc)
    principal.require_room(room)
    try:
        users = await svc.hub.presence(room_channel(room))
    except BackendUnavailable:
        raise Unavailable("the presence backend is unreachable", retry_after=2) from None
    return _json({"room": room, "users": users})


@bp.post("/api/notifications")
@idempotent
async def post_notification() -> Response:
    svc = services()
    principal = await current_principal(svc)
    principal.require_scope("notify")
    raw = await request_body(svc)
    mimetype = (request.content_type or "").split(";", 1)[0].strip().lower()
    if mimetype in ("text/plain", "application/x-www-form-urlencoded", ""):
        # curl -d 'Deploy at 5' .../api/notifications?user=bob (or ?broadcast=1), as ntfy takes it
        body: dict[str, Any] = {"data": {"message": text_from_body(raw)},
                                "user": request.args.get("user")}
        if request.args.get("broadcast") in ("1", "true", "yes"):
            body["broadcast"] = True
    else:
        body = json_object(request.content_type or "", raw)
    if "data" not in body:
        raise BadRequest("'data' is required (any JSON value)")
    user, to_all = body.get("user"), body.get("broadcast")
    if to_all is not True and (not isinstance(user, str) or not user or len(user) > 128):
        raise BadRequest('give "user": "ID" or "broadcast": true (a plain body: ?user=ID or ?broadcast=1)')
    if to_all is True and user is not None:
        raise BadRequest('give either "user" or "broadcast": true, not both (?user=ID or ?broadcast=1)')
    channel = BROADCAST if to_all is True else user_channel(user)  # type: ignore[arg-type]
    message = await publish_limited(svc, principal, channel, {"type": "notification", "data": body["data"]},
                                    publisher_bucket(svc, principal), sender=None)
    count_published(svc, principal, channel)
    return _json({"id": message.id}, 202)


@bp.post("/auth/ticket")
async def post_ticket() -> Response:
    svc = services()
    principal = await current_principal(svc)
    left = principal.seconds_left()
    if left is not None and left <= 0:  # within the verify leeway, but its ticket would be refused
        raise Unauthorized("token expired")
    await take_token(svc, Bucket(f"tickets:{principal.user}", TICKETS_PER_S,
                                 2 * svc.settings.max_connections_per_user), "ticket")
    try:
        ticket = await issue_ticket(svc.hub.backend, principal)
    except BackendUnavailable:
        raise Unavailable("the ticket store is unreachable", retry_after=2) from None
    return _json({"ticket": ticket, "expires_in": 30})


@bp.post("/auth/demo-token")
async def post_demo_token() -> Response:
    svc = services()
    if not svc.settings.demo_login_enabled or not svc.authenticator.can_issue:
        raise Forbidden("demo login is disabled (JWT_SECRET is set and DEMO_LOGIN is not 1)")
    body = json_object(request.content_type or "", await request_body(svc))
    user = body.get("user")
    if not isinstance(user, str) or not valid_demo_user(user):
        raise BadRequest(f"'user' must be 1-{_DEMO_USER_MAX} characters of A-Z a-z 0-9 _ . -")
    scope = body.get("scope", "")
    if scope not in ("", "notify"):
        raise BadRequest("'scope' may only be \"notify\"")
    ttl = 3600
    token = svc.authenticator.issue(user, scope=scope, ttl_s=ttl, demo=True)
    return _json({"token": token, "expires_in": ttl})


def valid_demo_user(user: str) -> bool:
    return 0 < len(user) <= _DEMO_USER_MAX and all(c.isascii() and (c.isalnum() or c in "_.-")
                                                   for c in user)
