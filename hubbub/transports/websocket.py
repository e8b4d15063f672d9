"""WebSocket transport: /ws/echo, /ws/chat, /ws/notifications, /ws (ASGI handlers, see asgi.py).

The connection's one task reads the client's frames; everything written after the
welcome goes through the subscription (see live.py). Every endpoint gets the same
rules: the origin check, MAX_CONNECTIONS, the message size in bytes, pings and the
idle close, the drain on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from operator import attrgetter
from typing import Any

from hubbub.auth import AUTH_FRAME_TIMEOUT_S, Principal
from hubbub.errors import BadRequest, Close, HubError, RateLimited, TooLarge, Unauthorized, Unavailable
from hubbub.hub.backends.base import BackendUnavailable
from hubbub.hub.message import Message, dumps
from hubbub.hub.wire import websocket_frame, websocket_text_frame
from hubbub.limits import LocalBucket
from hubbub.transports.asgi import Receive, Request, Send, reject_upgrade
from hubbub.transports.channels import (
    ChannelsFor,
    Plan,
    channel_name,
    client_names,
    hub_channels,
    notifications_plan,
    room_plan,
    set_plan,
)
from hubbub.transports.common import (
    Services,
    ack_frame,
    check_origin,
    identify,
    new_connection_id,
    publish_chat,
    refuse_while_draining,
)
from hubbub.transports.hypercorn_bridge import CLOSE_GRACE_S, Bridge
from hubbub.transports.inbound import ClientFrame, parse_frame
from hubbub.transports.live import BACKEND_DOWN, INTERNAL_ERROR, RESTARTING, Closing, LiveConnection

log = logging.getLogger(__name__)

_PONG = '{"type":"pong"}'
# Replies to a client's own frames (acks, errors, pongs) wait for the writer past this
# backlog, so a client that floods is paced by how fast it reads, not disconnected.
REPLY_BACKLOG = 64
REPLY_WAIT_S = 10.0
# subscribe/unsubscribe frames per second on /ws, after a burst of MAX_CHANNELS_PER_CONNECTION:
# each may subscribe at the backend, so a client cannot make the process churn.
CHANNEL_CHANGES_PER_S = 10.0


class PeerLeft(Exception):
    """The client went away before its connection was set up."""


def _data(event: dict[str, Any]) -> str | bytes:
    text = event.get("text")
    return text if text is not None else (event.get("bytes") or b"")


def too_big(data: str | bytes, max_bytes: int) -> bool:
    """Whether ``data`` is over ``max_bytes`` as sent: text counts in UTF-8 bytes."""
    if isinstance(data, bytes) or len(data) > max_bytes or len(data) * 4 <= max_bytes:
        return len(data) > max_bytes  # characters > max means bytes > max; 4 bytes at most each
    return len(data.encode()) > max_bytes


def _attach(svc: Services, send: Send) -> Bridge | None:
    bridge = Bridge.attach(send, websocket=True, compression=svc.settings.websocket_compression,
                           max_message_bytes=svc.settings.max_message_bytes)
    svc.watch_server_shutdown(bridge)
    return bridge


async def echo(svc: Services, request: Request, receive: Receive, send: Send) -> None:
    await receive()  # websocket.connect
    bridge = _attach(svc, send)
    if svc.draining:
        await _refuse_while_draining(send, bridge)
        return
    try:
        check_origin(svc.settings, request.headers, request.host)
        svc.limits.acquire()
    except HubError as error:
        await reject_upgrade(send, request, error)
        return
    try:
        async with svc.hub.subscribe(()) as subscription:
            await send({"type": "websocket.accept"})
            connection = EchoConnection(svc, None, subscription, request.scope, send, None, bridge)
            try:
                await connection.open()
                while (event := await receive())["type"] != "websocket.disconnect":
                    await connection.received(event)
            finally:
                await connection.close()
    finally:
        svc.limits.release()


async def _caller(svc: Services, request: Request, channels_for: ChannelsFor) -> Principal | None:
    """The caller, checked against the channels it asks for (a room the token does not allow:
    403 before the upgrade); None when it signs in with an auth frame after the accept.

    Returns rather than going on to serve: a live connection keeps every coroutine frame
    above it for its whole life, so the call chain is kept short."""
    check_origin(svc.settings, request.headers, request.host)
    principal = await identify(svc, request, tickets=True)
    if principal is not None:
        channels_for(principal)
    return principal


async def _refuse_while_draining(send: Send, bridge: Bridge | None) -> None:
    """Accept-then-1012 rather than an HTTP 503: browsers only see a code after an accept."""
    await send({"type": "websocket.accept"})
    await _close(send, bridge, RESTARTING)


async def _close(send: Send, bridge: Bridge | None, closing: Closing) -> None:
    """Sends the close frame; a peer that does not take it within the grace is dropped."""
    try:
        async with asyncio.timeout(CLOSE_GRACE_S):
            await send({"type": "websocket.close", "code": closing.code, "reason": closing.reason})
    except TimeoutError:
        if bridge is not None:
            bridge.abort()


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
    if too_big(data, svc.settings.max_message_bytes):
        raise TooLarge("message too big")
    try:
        frame = parse_frame(data)
    except BadRequest as error:
        raise Unauthorized(f"expected an auth frame: {error.detail}") from None
    if frame.type != "auth":
        raise Unauthorized("the first frame must be {\"type\":\"auth\",\"token\":...}")
    return svc.authenticator.verify(frame.token)


async def _serve(svc: Services, request: Request, receive: Receive, send: Send, *, plan: Plan,
                 multi: bool) -> None:
    """Checks the caller, counts the connection, accepts, subscribes, and serves it until the
    peer is gone. The endpoints are this with their plan (a partial: no frame of their own)."""
    await receive()  # websocket.connect
    bridge = _attach(svc, send)
    if svc.draining:
        await _refuse_while_draining(send, bridge)
        return
    try:
        channels_for, room = plan(svc, request)
        principal = await _caller(svc, request, channels_for)
    except HubError as error:
        await reject_upgrade(send, request, error)
        return
    connection_id = new_connection_id()
    user: str | None = None  # whose connection slot this holds, once it does
    try:  # refused before the upgrade, with an HTTP status the client can read
        svc.limits.acquire()
    except HubError as error:
        await reject_upgrade(send, request, error)
        return
    try:
        if principal is not None:
            try:
                await svc.limits.acquire_user(principal.user, connection_id)
                user = principal.user
            except HubError as error:
                await reject_upgrade(send, request, error)
                return
        accepted = principal is None
        if principal is None:
            await send({"type": "websocket.accept"})
            try:
                principal = await _principal_from_first_frame(svc, receive)
                channels_for(principal)
                refuse_while_draining(svc)
                await svc.limits.acquire_user(principal.user, connection_id)
                user = principal.user
            except PeerLeft:
                return
            except HubError as error:
                if error.status == 401:
                    svc.metrics.auth_failure(error.detail, request.path)
                await _close(send, bridge, Closing(error.close_code, error.detail[:120]))
                return
        # Subscribed here, not in a function of its own: one coroutine frame less per connection.
        channels = channels_for(principal)
        del channels_for  # a closure: not kept for the connection's life
        try:
            # Not ``async with hub.subscribe()``: the frame would keep two objects more for
            # the connection's life.
            subscription = await svc.hub.open_subscription(channels, cursor=request.args.get("since"),
                                                           connection_id=connection_id)
            try:
                connection = WebSocketConnection(svc, principal, subscription, request.scope, send, room,
                                                 bridge, multi=multi)
                del request  # what it parsed is not kept for the connection's life
                await connection.greet(connection.welcome(), accept=not accepted)
                accepted = True
                try:
                    await connection.open()
                    # The read loop is here, not in a method: a live connection keeps every
                    # coroutine frame of its task's chain for its whole life (~0.3 KB each).
                    while (event := await receive())["type"] != "websocket.disconnect":
                        await connection.received(event)
                finally:
                    await connection.close()
            finally:
                await svc.hub.close_subscription(subscription)
        except BackendUnavailable:
            if not accepted:
                await send({"type": "websocket.accept"})
            await _close(send, bridge, BACKEND_DOWN)
    finally:
        if user is not None:
            await svc.limits.release_user(user, connection_id)
        svc.limits.release()


chat = partial(_serve, plan=room_plan, multi=False)
notifications = partial(_serve, plan=notifications_plan, multi=False)
channels = partial(_serve, plan=set_plan, multi=True)


class WebSocketConnection(LiveConnection):
    __slots__ = ("_changes",)

    transport = "websocket"
    frame_of = attrgetter("ws_frame")
    checks_silence = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = self.svc.settings.max_channels_per_connection
        self._changes = LocalBucket(CHANNEL_CHANGES_PER_S, limit) if self.multi else None

    async def greet(self, welcome: str, *, accept: bool) -> None:
        """Accepts the WebSocket (unless it already is) and sends the welcome: straight to the
        socket where the wire allows, like every message after it, the 101 and the welcome
        in one write (Hypercorn's accept, through h11 and its lock and drain, cost ~7% of a
        connect's CPU); through the server otherwise."""
        if self.direct is None:
            if accept:
                await self.send({"type": "websocket.accept"})
            await self.send({"type": "websocket.send", "text": welcome})
            return
        frame = websocket_text_frame(welcome.encode())
        if accept:
            assert self.bridge is not None  # a direct writer comes from the bridge
            head = await self.bridge.accept_websocket()
            if head is None:
                await self.send({"type": "websocket.accept"})
            else:
                frame = head + frame
        self.direct.write_bytes(frame)

    async def send_batch(self, batch: Sequence[Message]) -> None:
        for message in batch:
            if isinstance(message, BinaryFrame):
                await self.send({"type": "websocket.send", "bytes": message.data})
            else:
                await self.send({"type": "websocket.send", "text": message.json})

    def heartbeat(self) -> None:
        if self.bridge is not None:  # None under another server: no pings
            self.bridge.ping()

    async def send_ending(self, closing: Closing) -> None:
        await self.send({"type": "websocket.close", "code": closing.code, "reason": closing.reason})

    async def received(self, event: dict[str, Any]) -> None:
        """One frame from the peer: handled (errors answered on the wire, never raised), then,
        while its replies are backed up, the next frame waits (the caller reads it after)."""
        if self.closing is not None:
            return  # our close frame is out: wait for the peer's
        data = _data(event)
        max_bytes = self.svc.settings.max_message_bytes
        if too_big(data, max_bytes):  # the bridge refuses it sooner, where there is one
            self.end(Closing(Close.TOO_LARGE, f"messages are limited to {max_bytes} bytes"))
            return
        sub = self.sub
        try:
            await self.handle(data)
        except HubError as error:
            sub.send_frame(error.frame())
        except Exception:
            user = self.principal.user if self.principal is not None else None
            log.exception("connection of user %s on %s failed", user,
                          sub.channels[0] if sub.channels else "/ws/echo")
            self.end(INTERNAL_ERROR)
        if sub.backlog > REPLY_BACKLOG and self.closing is None:
            try:
                async with asyncio.timeout(REPLY_WAIT_S):
                    await sub.drained()
            except TimeoutError:
                self.end(Closing(Close.TRY_AGAIN_LATER, "not reading replies: slow consumer"))

    async def handle(self, data: str | bytes) -> None:
        frame = parse_frame(data)
        if frame.type == "ping":
            self.sub.send_frame(_PONG)
            return
        try:
            if frame.type == "chat" and self.principal is not None:
                room = self.chat_room(frame.channel)
                message = await publish_chat(self.svc, self.principal, room, frame.text,
                                             origin=self.sub.connection_id)
                self.sub.send_frame(ack_frame(message.id, frame.ref))
            elif frame.type in ("subscribe", "unsubscribe") and self.multi:
                await self.change_channels(frame)
            else:
                raise BadRequest(f"{frame.type!r} frames are not accepted here")
        except HubError as error:
            self.sub.send_frame(error.frame(frame.ref))

    def chat_room(self, channel: str | None) -> str:
        """The room a chat frame goes to: the frame's ``channel`` on /ws, a room this connection
        is subscribed to; on /ws/chat the connection's room."""
        if self.multi:
            if channel is None:
                raise BadRequest("say which room: {\"type\":\"chat\",\"channel\":\"room:NAME\",\"text\"}")
            name = channel_name(channel)
            if name not in self.sub.channels:
                raise BadRequest(f"subscribe to {name} before sending to it")
            return name[5:]
        if self.room is None:
            raise BadRequest("'chat' frames are not accepted here")
        return self.room  # /ws/chat: its room, whatever the frame says (unknown fields are dropped)

    async def change_channels(self, frame: ClientFrame) -> None:
        """``subscribe``: messages of the channel from now on (and presence in a room);
        ``unsubscribe``: no more. Answered with ``subscribed``/``unsubscribed`` and the ref."""
        assert self.principal is not None
        name = channel_name(frame.channel)
        wanted = hub_channels((name,), self.principal)  # Forbidden for a room the token lacks
        hub, sub, metrics = self.svc.hub, self.sub, self.svc.metrics
        if self._changes is not None and self._changes.take() > 0:
            raise RateLimited(f"at most {CHANNEL_CHANGES_PER_S:.0f} subscribe/unsubscribe frames a second")
        if frame.type == "subscribe":
            limit = self.svc.settings.max_channels_per_connection
            if name not in client_names(sub.channels) and len(client_names(sub.channels)) >= limit:
                raise BadRequest(f"at most {limit} channels on one connection")
            added: list[str] = []
            try:
                for channel in wanted:
                    if await hub.add_channel(sub, channel):
                        added.append(channel)
                        metrics.subscribed(channel).inc()
                    if channel.startswith("room:"):
                        await self.join(channel)
            except BackendUnavailable:
                await self._drop_channels(added)  # refused means the set is as it was
                raise Unavailable("the message backend is unreachable; retry later", retry_after=2) from None
        else:
            await self._drop_channels(wanted)
        reply = {"type": f"{frame.type}d", "channel": name}
        sub.send_frame(dumps(reply if frame.ref is None else {**reply, "ref": frame.ref}))


    async def _drop_channels(self, channels: Sequence[str]) -> None:
        for channel in channels:
            await self.leave(channel)
            if await self.svc.hub.remove_channel(self.sub, channel):
                self.svc.metrics.subscribed(channel).dec()


class BinaryFrame(Message):
    """A binary WebSocket frame of one connection's own (an echo)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        super().__init__("", "")
        self.data = data
        self._ws_frame = websocket_frame(data, binary=True)


class EchoConnection(WebSocketConnection):
    """/ws/echo: each frame back as it came, within the chat rate (per connection: no user)."""

    __slots__ = ("_bucket",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        settings = self.svc.settings
        self._bucket = LocalBucket(settings.rate_limit_per_second, settings.rate_limit_burst)

    async def handle(self, data: str | bytes) -> None:
        wait_s = self._bucket.take()
        if wait_s > 0:
            raise RateLimited(f"slow down: next frame allowed in {wait_s:.1f} s", retry_after=wait_s)
        self.sub.send_frame(BinaryFrame(data) if isinstance(data, bytes) else data)
