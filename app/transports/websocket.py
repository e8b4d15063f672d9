"""WebSocket transport: /ws/echo, /ws/chat, /ws/notifications.

Each connection runs a reader (client frames → hub), a writer (outbox → socket)
and a deadline (token expiry); whichever ends first decides the close code.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from operator import attrgetter

from quart import Blueprint, Response, websocket

from app.auth import AUTH_FRAME_TIMEOUT_S, Principal, authenticate
from app.errors import BadRequest, Close, HubError, TooLarge, Unauthorized
from app.hub.backends.base import BackendUnavailable
from app.hub.hub import notification_channels, room_channel
from app.hub.subscription import SlowConsumer, Subscription
from app.transports.common import (
    Services,
    ack_frame,
    admit,
    check_origin,
    new_connection_id,
    publish_chat,
    services,
    valid_room,
    welcome_frame,
)
from app.transports.connection_control import DirectWriter, control_of
from app.transports.inbound import parse_frame

log = logging.getLogger(__name__)
bp = Blueprint("websocket", __name__)

_PONG = '{"type":"pong"}'
_WS_FRAME = attrgetter("ws_frame")
CLOSE_GRACE_S = 2.0
# Replies to a client's own frames (acks, errors, pongs) wait for the writer past this
# backlog, so a client that floods is paced by how fast it reads, not disconnected.
REPLY_BACKLOG = 64
REPLY_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Closing:
    code: int
    reason: str = ""


@bp.websocket("/ws/echo")
async def echo() -> None:
    svc = services()
    await websocket.accept()
    while True:
        data = await websocket.receive()
        if len(data) > svc.settings.max_message_bytes:
            await websocket.close(Close.TOO_BIG, "message too big")
            return
        await websocket.send(data)


@bp.websocket("/ws/chat")
async def chat() -> Response | None:
    svc = services()
    if svc.draining:
        await _refuse_while_draining()
        return None
    try:
        room = valid_room(websocket.args.get("room"))
        check_origin(svc.settings, websocket.headers, websocket.host)
        principal = await _principal_before_accept(svc)
        if principal is not None:
            principal.require_room(room)
            admit(svc, principal)
    except HubError as error:
        return error.response()
    await _serve(svc, principal, (room_channel(room),), room)
    return None


@bp.websocket("/ws/notifications")
async def notifications() -> Response | None:
    svc = services()
    if svc.draining:
        await _refuse_while_draining()
        return None
    try:
        check_origin(svc.settings, websocket.headers, websocket.host)
        principal = await _principal_before_accept(svc)
        if principal is not None:
            admit(svc, principal)
    except HubError as error:
        return error.response()
    await _serve(svc, principal, None, None)
    return None


async def _refuse_while_draining() -> None:
    """Accept-then-1012 rather than an HTTP 503: browsers only see a code after an accept."""
    await websocket.accept()
    await _close(Closing(Close.SERVICE_RESTART, "server restarting: reconnect shortly"))


async def _principal_before_accept(svc: Services) -> Principal | None:
    """None when the request has no credentials: they may come in the first frame."""
    return await authenticate(svc.authenticator, svc.hub.backend,
                              websocket.headers, websocket.args)


async def _principal_from_first_frame(svc: Services) -> Principal:
    """A WebSocket opened without credentials must send {"type":"auth","token"} first."""
    try:
        async with asyncio.timeout(AUTH_FRAME_TIMEOUT_S):
            data = await websocket.receive()
    except TimeoutError:
        raise Unauthorized(f"no auth frame within {AUTH_FRAME_TIMEOUT_S:.0f} s") from None
    if len(data) > svc.settings.max_message_bytes:
        raise TooLarge("message too big")
    try:
        frame = parse_frame(data)
    except BadRequest as error:
        raise Unauthorized(f"expected an auth frame: {error.detail}") from None
    if frame.type != "auth":
        raise Unauthorized("the first frame must be {\"type\":\"auth\",\"token\":...}")
    return svc.authenticator.verify(frame.token)


async def _serve(svc: Services, principal: Principal | None,
                 channels: tuple[str, ...] | None, room: str | None) -> None:
    """Accepts, subscribes, and runs the connection until one side ends it."""
    if principal is None:
        await websocket.accept()
        try:
            principal = await _principal_from_first_frame(svc)
            if room is not None:
                principal.require_room(room)
            admit(svc, principal)
        except HubError as error:
            svc.metrics.auth_failures += error.status == 401
            await _close(Closing(error.close_code, error.detail[:120]))
            return
    if channels is None:
        channels = notification_channels(principal.user)
    connection_id = new_connection_id()
    svc.connections.acquire(principal.user)
    svc.metrics.connections_opened += 1
    try:
        async with svc.hub.subscribe(
            channels, cursor=websocket.args.get("since"), connection_id=connection_id
        ) as subscription:
            await websocket.accept()
            await websocket.send(welcome_frame(
                channels[0], principal.user, subscription.recovered,
                svc.settings.heartbeat_interval_s,
            ))
            closing = await _run(svc, principal, subscription, room)
        await _close(closing)
    except BackendUnavailable:
        await websocket.accept()
        await _close(Closing(Close.TRY_AGAIN_LATER, "backend unavailable"))
    finally:
        svc.connections.release(principal.user)


async def _close(closing: Closing) -> None:
    """Sends the close frame; a peer that does not take it within the grace is dropped."""
    try:
        async with asyncio.timeout(CLOSE_GRACE_S):
            await websocket.close(closing.code, closing.reason)
    except TimeoutError:
        control = control_of(websocket.scope)
        if control is not None:
            control.abort()


async def _run(svc: Services, principal: Principal, subscription: Subscription,
               room: str | None) -> Closing:
    channel = subscription.channels[0]
    if room is not None:
        await svc.hub.join(channel, principal.user, subscription.connection_id)
    control = control_of(websocket.scope)
    direct = control.direct_writer(_WS_FRAME) if control is not None else None
    if direct is not None:
        subscription.write_now = direct.try_write
    writer = asyncio.ensure_future(_write(subscription, direct))
    # A writer stuck on a peer that stopped reading cannot see the overflow: cancel it.
    subscription.on_overflow = lambda: _cancel(writer)
    tasks = [
        writer,
        asyncio.ensure_future(_read(svc, principal, subscription, room)),
        asyncio.ensure_future(_watch(svc, principal)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = done.pop()
        if task.cancelled() or isinstance(task.exception(), SlowConsumer):
            svc.metrics.slow_consumers += 1
            return Closing(Close.TRY_AGAIN_LATER, "slow consumer: resume from your last id")
        if task.exception() is not None:
            log.error("connection of user %s on %s failed", principal.user, channel,
                      exc_info=task.exception())
            return Closing(Close.INTERNAL_ERROR, "internal error")
        return task.result()
    finally:
        subscription.on_overflow = subscription.write_now = None  # nothing after the close frame
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if room is not None:
            await svc.hub.leave(channel, principal.user, subscription.connection_id)


def _cancel(task: asyncio.Future[Closing]) -> None:
    task.cancel()


async def _read(svc: Services, principal: Principal, subscription: Subscription,
                room: str | None) -> Closing:
    max_bytes = svc.settings.max_message_bytes
    while True:
        if subscription.backlog > REPLY_BACKLOG:
            try:
                async with asyncio.timeout(REPLY_WAIT_S):
                    await subscription.drained()
            except TimeoutError:
                return Closing(Close.TRY_AGAIN_LATER, "not reading replies: slow consumer")
        data = await websocket.receive()
        if len(data) > max_bytes:
            return Closing(Close.TOO_BIG, f"messages are limited to {max_bytes} bytes")
        try:
            frame = parse_frame(data)
            if frame.type == "ping":
                subscription.send_frame(_PONG)
            elif frame.type == "chat" and room is not None:
                message = await publish_chat(svc, principal, room, frame.text,
                                             origin=subscription.connection_id)
                subscription.send_frame(ack_frame(message.id, frame.ref))
            else:
                raise BadRequest(f"{frame.type!r} frames are not accepted here")
        except HubError as error:
            subscription.send_frame(error.frame())


async def _write(subscription: Subscription, direct: DirectWriter | None) -> Closing:
    """Drains the outbox to the socket, a batch per write; raises SlowConsumer once it overflowed."""
    control = control_of(websocket.scope)
    while True:
        batch = await subscription.next_batch()
        if not batch:
            return Closing(Close.SERVICE_RESTART, "server restarting")
        if direct is not None:
            await direct.write(batch)
        elif control is not None:
            await control.send_texts([message.json for message in batch])
        else:
            for message in batch:
                await websocket.send(message.json)


async def _watch(svc: Services, principal: Principal) -> Closing:
    """One timer per connection: pings every HEARTBEAT_INTERVAL, closes a peer silent (pongs
    included) for IDLE_TIMEOUT, and closes with 4401 when the token expires."""
    control = control_of(websocket.scope)  # None under another server: no pings, no idle check
    interval, idle_limit = svc.settings.heartbeat_interval_s, svc.settings.idle_timeout_s
    while True:
        left = principal.seconds_left()
        if left is not None and left <= 0:
            return Closing(Close.UNAUTHORIZED, "token expired")
        await asyncio.sleep(min(interval, idle_limit) if left is None else min(interval, idle_limit, left))
        if control is None or (left is not None and left <= interval):
            continue  # expiry (or nothing to ping with) is decided at the top
        if control.idle_for() > idle_limit:
            return Closing(Close.TRY_AGAIN_LATER, f"nothing received for {idle_limit:.0f} s")
        try:
            async with asyncio.timeout(interval):
                await control.ping()
        except TimeoutError:
            pass  # the peer is not reading; the idle check or the outbox bound ends it
