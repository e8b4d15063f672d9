"""Server-Sent Events transport: /sse/chat and /sse/notifications.

Each batch of queued messages goes out as one chunk (one write for many events);
frames come from sse-starlette's encoder, built once per message (Message.sse).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from operator import attrgetter
from typing import Any

from quart import Blueprint, Response, request
from sse_starlette.event import ServerSentEvent

from app.auth import Principal
from app.errors import HubError
from app.hub.backends.base import BackendUnavailable
from app.hub.hub import notification_channels, room_channel
from app.hub.subscription import SlowConsumer
from app.hub.wire import http_chunk
from app.transports.common import (
    Services,
    admit,
    check_origin,
    new_connection_id,
    require_principal,
    services,
    valid_room,
    welcome_frame,
)
from app.transports.connection_control import abort_later, control_of

bp = Blueprint("sse", __name__)

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_HEARTBEAT = ServerSentEvent(comment="", sep="\n").encode()
_HEARTBEAT_CHUNK = http_chunk(_HEARTBEAT)
_SSE_CHUNK = attrgetter("sse_chunk")
OVERFLOW_GRACE_S = 1.0


def retry_hint_ms() -> int:
    """Reconnect delay, spread so the clients of one process do not all return at once."""
    return random.randint(1000, 5000)


@bp.get("/sse/chat")
async def chat() -> Response:
    svc = services()
    try:
        room = valid_room(request.args.get("room"))
        check_origin(svc.settings, request.headers, request.host)
        principal = await require_principal(svc, request.headers, request.args)
        principal.require_room(room)
        admit(svc, principal)
    except HubError as error:
        return error.response()
    return _stream(svc, principal, (room_channel(room),), room)


@bp.get("/sse/notifications")
async def notifications() -> Response:
    svc = services()
    try:
        check_origin(svc.settings, request.headers, request.host)
        principal = await require_principal(svc, request.headers, request.args)
        admit(svc, principal)
    except HubError as error:
        return error.response()
    return _stream(svc, principal, notification_channels(principal.user), None)


def _stream(svc: Services, principal: Principal, channels: tuple[str, ...],
            room: str | None) -> Response:
    cursor = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    response = Response(_events(svc, principal, channels, room, cursor, request.scope),
                        content_type="text/event-stream", headers=_HEADERS)
    response.timeout = None  # else Quart's RESPONSE_TIMEOUT cuts the stream at 60 s
    return response


async def _events(svc: Services, principal: Principal, channels: tuple[str, ...],
                  room: str | None, cursor: str | None, scope: Any) -> AsyncIterator[bytes]:
    """Runs outside the request context: everything it needs is passed in."""
    hub, settings = svc.hub, svc.settings
    connection_id = new_connection_id()
    svc.connections.acquire(principal.user)
    svc.metrics.connections_opened += 1
    abort: asyncio.TimerHandle | None = None

    def on_overflow() -> None:
        # The generator may be parked at a yield the peer never reads: drop the connection
        # unless the stream ends by itself first.
        nonlocal abort
        abort = abort_later(scope, OVERFLOW_GRACE_S)

    try:
        async with hub.subscribe(channels, cursor=cursor, connection_id=connection_id) as sub:
            sub.on_overflow = on_overflow
            welcome = welcome_frame(channels[0], principal.user, sub.recovered,
                                    settings.heartbeat_interval_s)
            # A comment first flushes proxies; then the retry hint and the welcome event.
            yield (_HEARTBEAT
                   + ServerSentEvent(welcome, retry=retry_hint_ms(), sep="\n").encode())
            if room is not None:
                await hub.join(channels[0], principal.user, connection_id)
            # Past the first chunk, messages may go straight to the socket (see DirectWriter).
            control = control_of(scope) if scope.get("http_version") == "1.1" else None
            direct = control.direct_writer(_SSE_CHUNK) if control is not None else None
            if direct is not None:
                sub.write_now = direct.try_write
            try:
                while True:
                    timeout = settings.heartbeat_interval_s
                    left = principal.seconds_left()
                    if left is not None:
                        if left <= 0:
                            return  # token expired: the client fetches a new one and resumes
                        timeout = min(timeout, left)
                    try:
                        async with asyncio.timeout(timeout):
                            batch = await sub.next_batch()
                    except TimeoutError:
                        if direct is not None:
                            await direct.write_bytes(_HEARTBEAT_CHUNK)
                        else:
                            yield _HEARTBEAT
                        continue
                    if not batch:  # shutting down
                        sub.write_now = None
                        yield ServerSentEvent(retry=retry_hint_ms(), sep="\n").encode()
                        return
                    if direct is not None:
                        await direct.write(batch)
                    else:
                        yield b"".join([message.sse for message in batch])
            except SlowConsumer:
                svc.metrics.slow_consumers += 1
            finally:
                sub.write_now = None
                if room is not None:
                    await hub.leave(channels[0], principal.user, connection_id)
    except BackendUnavailable:
        yield ServerSentEvent('{"type":"error","code":"unavailable","detail":"backend unavailable"}',
                              retry=retry_hint_ms(), sep="\n").encode()
    finally:
        if abort is not None:
            abort.cancel()
        svc.connections.release(principal.user)
