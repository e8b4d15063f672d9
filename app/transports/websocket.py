"""WebSocket transport: /ws/echo, /ws/chat, /ws/notifications (ASGI handlers, see asgi.py).

The connection's one task reads the client's frames; everything written after the
welcome goes through the subscription (see live.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from app.auth import AUTH_FRAME_TIMEOUT_S, Principal, authenticate
from app.errors import BadRequest, Close, HubError, TooLarge, Unauthorized
from app.hub.backends.base import BackendUnavailable
from app.hub.hub import notification_channels, room_channel
from app.hub.message import Message
from app.hub.wire import websocket_text_frame
from app.transports.asgi import Receive, Request, Send, reject_upgrade
from app.transports.common import (
    Services,
    ack_frame,
    admit,
    check_origin,
    new_connection_id,
    publish_chat,
    valid_room,
    welcome_frame,
)
from app.transports.connection_control import control_of
from app.transports.inbound import parse_frame
from app.transports.live import (
    BACKEND_DOWN,
    CLOSE_GRACE_S,
    INTERNAL_ERROR,
    Closing,
    LiveConnection,
)

log = logging.getLogger(__name__)

_PONG = '{"type":"pong"}'
# Replies to a client's own frames (acks, errors, pongs) wait for the writer past this
# backlog, so a client that floods is paced by how fast it reads, not disconnected.
REPLY_BACKLOG = 64
REPLY_WAIT_S = 10.0


class PeerLeft(Exception):
    """The client went away before its connection was set up."""


def _data(event: dict[str, Any]) -> str | bytes:
    text = event.get("text")
    return text if text is not None else (event.get("bytes") or b"")


async def echo(svc: Services, request: Request, receive: Receive, send: Send) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        data = _data(event)
        if len(data) > svc.settings.max_message_bytes:
            await _close(send, request, Closing(Close.TOO_BIG, "message too big"))
            return
        key = "text" if isinstance(data, str) else "bytes"
        await send({"type": "websocket.send", key: data})


async def chat(svc: Services, request: Request, receive: Receive, send: Send) -> None:
    await receive()  # websocket.connect
    if svc.draining:
        await _refuse_while_draining(send, request)
        return
    try:
        room = valid_room(request.args.get("room"))
        check_origin(svc.settings, request.headers, request.host)
        principal = await authenticate(svc.authenticator, svc.hub.backend, request.headers, request.args)
        if principal is not None:
            principal.require_room(room)
            admit(svc, principal)
    except HubError as error:
        await reject_upgrade(send, request, error)
        return
    await _serve(svc, request, receive, send, principal, (room_channel(room),), room)


async def notifications(svc: Services, request: Request, receive: Receive, send: Send) -> None:
    await receive()  # websocket.connect
    if svc.draining:
        await _refuse_while_draining(send, request)
        return
    try:
        check_origin(svc.settings, request.headers, request.host)
        principal = await authenticate(svc.authenticator, svc.hub.backend, request.headers, request.args)
        if principal is not None:
            admit(svc, principal)
    except HubError as error:
        await reject_upgrade(send, request, error)
        return
    await _serve(svc, request, receive, send, principal, None, None)


async def _refuse_while_draining(send: Send, request: Request) -> None:
    """Accept-then-1012 rather than an HTTP 503: browsers only see a code after an accept."""
    await send({"type": "websocket.accept"})
    await _close(send, request, Closing(Close.SERVICE_RESTART, "server restarting: reconnect shortly"))


async def _close(send: Send, request: Request, closing: Closing) -> None:
    """Sends the close frame; a peer that does not take it within the grace is dropped."""
    try:
        async with asyncio.timeout(CLOSE_GRACE_S):
            await send({"type": "websocket.close", "code": closing.code, "reason": closing.reason})
    except TimeoutError:
        control = control_of(request.scope)
        if control is not None:
            control.abort()


async def _principal_from_first_frame(svc: Services, receive: Receive) -> Principal:
    """A WebSocket opened without credentials must send {"type":"auth","token"} first."""
    try:
        async with asyncio.timeout(AUTH_FRAME_TIMEOUT_S):
            event = await receive()
    except TimeoutError:
        raise Unauthorized(f"no auth frame within {AUTH_FRAME_TIMEOUT_S:.0f} s") from None
    if event["type"] == "websocket.disconnect":
        raise PeerLeft
    data = _data(event)
    if len(data) > svc.settings.max_message_bytes:
        raise TooLarge("message too big")
    try:
        frame = parse_frame(data)
    except BadRequest as error:
        raise Unauthorized(f"expected an auth frame: {error.detail}") from None
    if frame.type != "auth":
        raise Unauthorized("the first frame must be {\"type\":\"auth\",\"token\":...}")
    return svc.authenticator.verify(frame.token)


async def _serve(svc: Services, request: Request, receive: Receive, send: Send,
                 principal: Principal | None, channels: tuple[str, ...] | None,
                 room: str | None) -> None:
    """Accepts, subscribes, and serves the connection until the peer is gone."""
    accepted = principal is None
    if principal is None:
        await send({"type": "websocket.accept"})
        try:
            principal = await _principal_from_first_frame(svc, receive)
            if room is not None:
                principal.require_room(room)
            admit(svc, principal)
        except PeerLeft:
            return
        except HubError as error:
            svc.metrics.auth_failures += error.status == 401
            await _close(send, request, Closing(error.close_code, error.detail[:120]))
            return
    if channels is None:
        channels = notification_channels(principal.user)
    svc.connections.acquire(principal.user)
    svc.metrics.connections_opened += 1
    try:
        async with svc.hub.subscribe(channels, cursor=request.args.get("since"),
                                     connection_id=new_connection_id()) as subscription:
            if not accepted:
                await send({"type": "websocket.accept"})
                accepted = True
            connection = WebSocketConnection(svc, principal, subscription, request.scope, send, room)
            await connection.greet(welcome_frame(
                channels[0], principal.user, subscription.recovered, svc.settings.heartbeat_interval_s,
            ))
            await connection.run(receive)
    except BackendUnavailable:
        if not accepted:
            await send({"type": "websocket.accept"})
        await _close(send, request, BACKEND_DOWN)
    finally:
        svc.connections.release(principal.user)


class WebSocketConnection(LiveConnection):
    __slots__ = ()

    frame_attribute = "ws_frame"
    checks_silence = True

    async def greet(self, welcome: str) -> None:
        if self.direct is not None:
            self.direct.write_bytes(websocket_text_frame(welcome.encode()))
        else:
            await self.send({"type": "websocket.send", "text": welcome})

    async def send_batch(self, batch: Sequence[Message]) -> None:
        for message in batch:
            await self.send({"type": "websocket.send", "text": message.json})

    def heartbeat(self) -> None:
        if self.control is not None:  # None under another server: no pings
            self.control.ping()

    async def send_ending(self, closing: Closing) -> None:
        await self.send({"type": "websocket.close", "code": closing.code, "reason": closing.reason})

    async def serve(self, receive: Receive) -> None:
        sub, max_bytes = self.sub, self.svc.settings.max_message_bytes
        while True:
            if sub.backlog > REPLY_BACKLOG and self.closing is None:
                try:
                    async with asyncio.timeout(REPLY_WAIT_S):
                        await sub.drained()
                except TimeoutError:
                    self.end(Closing(Close.TRY_AGAIN_LATER, "not reading replies: slow consumer"))
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            if self.closing is not None:
                continue  # our close frame is out: wait for the peer's
            data = _data(event)
            if len(data) > max_bytes:
                self.end(Closing(Close.TOO_BIG, f"messages are limited to {max_bytes} bytes"))
                continue
            try:
                await self._handle(data)
            except HubError as error:
                sub.send_frame(error.frame())
            except Exception:
                log.exception("connection of user %s on %s failed", self.principal.user, sub.channels[0])
                self.end(INTERNAL_ERROR)

    async def _handle(self, data: str | bytes) -> None:
        frame = parse_frame(data)
        if frame.type == "ping":
            self.sub.send_frame(_PONG)
        elif frame.type == "chat" and self.room is not None:
            message = await publish_chat(self.svc, self.principal, self.room, frame.text,
                                         origin=self.sub.connection_id)
            self.sub.send_frame(ack_frame(message.id, frame.ref))
        else:
            raise BadRequest(f"{frame.type!r} frames are not accepted here")

