"""``POST /api/publish``: a backend's structured events to any channel, one or a batch.

    {"channel": "room:orders", "type": "order_updated", "data": {"id": 42}}  -> 202 {"id"}
    [{...}, {...}]  (up to 100)                                              -> 202 {"ids"}

For an API key (API_KEYS) or a JWT with scope ``publish``. Delivered as sent, stamped:
``{"id", "type", "data", "channel", "sender", "timestamp"}``, the sender being the key's
name or the token's ``sub``.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from hubbub.errors import BadRequest, Unavailable
from hubbub.hub.backends.base import BackendUnavailable
from hubbub.hub.hub import check_channel
from hubbub.hub.message import check_event_type, dumps
from hubbub.transports.common import checked_by_hook, count_published, limit_publisher, services
from hubbub.transports.http import current_principal, request_body
from hubbub.transports.idempotency import idempotent
from hubbub.transports.inbound import json_value

bp = Blueprint("publishing", __name__)

MAX_BATCH = 100
EVENT_FIELDS = frozenset({"channel", "type", "data"})


def valid_event(value: Any, where: str = "the event") -> tuple[str, dict[str, Any]]:
    """(channel, {"type", "data"}) from one event, or a BadRequest saying what is wrong."""
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object with channel, type and data")
    unknown = sorted(set(value) - EVENT_FIELDS)
    if unknown:
        raise BadRequest(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}: "
                         "an event has channel, type and data")
    channel, kind = value.get("channel"), value.get("type")
    if not isinstance(channel, str):
        raise BadRequest(f"{where}: 'channel' must be 'room:NAME', 'user:ID' or 'broadcast'")
    if not isinstance(kind, str):
        raise BadRequest(f"{where}: 'type' must be a string")
    try:
        check_channel(channel)
        check_event_type(kind)
    except ValueError as error:
        raise BadRequest(f"{where}: {error}") from None
    return channel, {"type": kind, "data": value.get("data")}


@bp.post("/api/publish")
@idempotent
async def post_publish() -> Response:
    svc = services()
    principal = await current_principal(svc)
    principal.require_scope("publish")
    body = json_value(request.content_type or "", await request_body(svc))
    batch = isinstance(body, list)
    items = body if isinstance(body, list) else [body]
    if batch and not 1 <= len(items) <= MAX_BATCH:
        raise BadRequest(f"a batch holds 1 to {MAX_BATCH} events, got {len(items)}")
    events = [valid_event(item, f"event {i}" if batch else "the event") for i, item in enumerate(items)]
    await limit_publisher(svc, principal, cost=len(events))
    ids = []
    for channel, message in events:
        message = await checked_by_hook(svc, principal, channel, message)
        try:
            published = await svc.hub.publish(channel, message, sender=principal.user)
        except BackendUnavailable:
            # A batch is not atomic: what went out before this went out. Retried with the
            # same Idempotency-Key, the whole batch runs again.
            raise Unavailable("the message backend is unreachable", retry_after=2) from None
        count_published(svc, principal, channel)
        ids.append(published.id)
    reply = {"ids": ids} if batch else {"id": ids[0]}
    return Response(dumps(reply), status=202, content_type="application/json")
