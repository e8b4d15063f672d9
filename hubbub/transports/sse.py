"""Server-Sent Events transport: /sse/chat, /sse/notifications, /sse (ASGI handlers, see asgi.py).

On the fast path (HTTP/1.1 on Hypercorn) the response head and the first chunk (a
comment, the retry hint, the welcome) leave in one write straight to the socket, and
then each message's shared chunk (see live.py); the ending goes through the server.
Events come from sse-starlette's encoder, built once per message (Message.sse).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from functools import partial
from operator import attrgetter
from typing import Any

from sse_starlette.event import ServerSentEvent

from hubbub.errors import Close, HubError
from hubbub.hub.backends.base import BackendUnavailable
from hubbub.hub.message import Message
from hubbub.hub.wire import http_chunk
from hubbub.transports.asgi import Receive, Request, Send, raw_headers, send_error
from hubbub.transports.channels import Plan, notifications_plan, room_plan, set_plan
from hubbub.transports.common import (
    Services,
    check_origin,
    cors_headers,
    new_connection_id,
    refuse_while_draining,
    require_principal,
)
from hubbub.transports.hypercorn_bridge import Bridge, header_block
from hubbub.transports.live import BACKEND_DOWN, Closing, LiveConnection

_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
            "X-Content-Type-Options": "nosniff"}
# Shared by every stream without CORS headers: the server keeps the start message for the
# stream's life, so a copy per connection would cost ~0.5 KB each. Nothing mutates it.
_START = {"type": "http.response.start", "status": 200, "headers": raw_headers(_HEADERS)}
_HEAD = header_block(raw_headers(_HEADERS))  # the same, for a head written here (no CORS headers)
_HEARTBEAT = ServerSentEvent(comment="", sep="\n").encode()
_HEARTBEAT_CHUNK = http_chunk(_HEARTBEAT)
# With ?heartbeat=1 the heartbeat is an event the page sees (EventSource hides comments), so
# a client can tell a quiet stream from a dead one. Without it, curl -N output is unchanged.
_PING = ServerSentEvent('{"type":"ping"}', sep="\n").encode()
_PING_CHUNK = http_chunk(_PING)
SEND_PIECE_BYTES = 32 * 1024
_BACKEND_DOWN_EVENT = '{"type":"error","code":"unavailable","detail":"backend unavailable"}'


def retry_hint_ms() -> int:
    """Reconnect delay, spread so the clients of one process do not all return at once."""
    return random.randint(1000, 5000)


def _retry_event(data: str | None = None) -> bytes:
    """The retry hint, with ``data`` (a JSON frame) as the event's data when given."""
    if data is None or "\n" in data or "\r" in data:
        return ServerSentEvent(data, retry=retry_hint_ms(), sep="\n").encode()
    # One line: the encoder's bytes, formatted directly (it takes ~4 µs, a connect makes one).
    return b"data: %s\nretry: %d\n\n" % (data.encode(), retry_hint_ms())


def _start_message(svc: Services, request: Request) -> dict[str, Any]:
    """The response's start: the shared one, unless the caller's origin gets CORS headers."""
    cors = cors_headers(svc.settings, request.headers.get("Origin"))
    return {**_START, "headers": raw_headers({**_HEADERS, **cors})} if cors else _START


async def _serve(svc: Services, request: Request, receive: Receive, send: Send, *, plan: Plan,
                 multi: bool) -> None:
    """Checks the caller, counts the stream, subscribes, and serves it until the peer is gone.
    The endpoints are this with their plan (a partial: no coroutine frame of their own, as
    every frame in the chain lives as long as the stream)."""
    try:
        refuse_while_draining(svc)
        channels_for, room = plan(svc, request)
        check_origin(svc.settings, request.headers, request.host)
        principal = await require_principal(svc, request, tickets=True)
        channels = channels_for(principal)
    except HubError as error:
        await send_error(send, request, svc.settings, error)
        return
    del channels_for  # a closure: not kept for the stream's life
    cursor = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    start = _start_message(svc, request)
    connection_id = new_connection_id()
    bridge = Bridge.attach(send)
    svc.watch_server_shutdown(bridge)
    try:  # refused with an HTTP status before the stream starts
        svc.limits.acquire()
    except HubError as error:
        await send_error(send, request, svc.settings, error)
        return
    try:
        try:
            await svc.limits.acquire_user(principal.user, connection_id)
        except HubError as error:
            await send_error(send, request, svc.settings, error)
            return
        try:
            started = False
            try:
                # Not ``async with hub.subscribe()``: two objects more kept for the stream's life.
                sub = await svc.hub.open_subscription(channels, cursor=cursor, connection_id=connection_id)
                try:
                    connection = SSEConnection(svc, principal, sub, request.scope, send, room, bridge,
                                               multi=multi)
                    connection.visible_heartbeat = request.args.get("heartbeat") == "1"
                    del request  # what it parsed is not kept for the stream's life
                    await connection.start(start)
                    started = True
                    try:
                        await connection.open()
                        # Reads the request's (empty) body until the peer is gone. Here, not in a
                        # method: every coroutine frame in the chain lives as long as the stream.
                        while (await receive())["type"] != "http.disconnect":
                            pass
                    finally:
                        await connection.close()
                finally:
                    await svc.hub.close_subscription(sub)
            except BackendUnavailable:
                if not started:
                    await send(start)
                await send({"type": "http.response.body", "body": _retry_event(_BACKEND_DOWN_EVENT),
                            "more_body": False})
        finally:
            await svc.limits.release_user(principal.user, connection_id)
    finally:
        svc.limits.release()


chat = partial(_serve, plan=room_plan, multi=False)
notifications = partial(_serve, plan=notifications_plan, multi=False)
# /sse?channels=room:lobby,notifications: any set on one stream (a new set: reconnect with it
# and the last id).
channels = partial(_serve, plan=set_plan, multi=True)


class SSEConnection(LiveConnection):
    __slots__ = ("_beat", "visible_heartbeat")

    transport = "sse"
    frame_of = attrgetter("sse_chunk")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._beat: asyncio.Task[None] | None = None  # a heartbeat through the server (HTTP/2)
        self.visible_heartbeat = False  # a ping event instead of a comment (?heartbeat=1)

    def wire_allows_direct(self, scope: dict[str, Any]) -> bool:
        return scope.get("http_version") == "1.1"  # chunked bodies: HTTP/1.1 only

    async def start(self, start: dict[str, Any]) -> None:
        """The response head and the greeting: a comment first flushes proxies; then the
        retry hint and the welcome event. On the fast path both leave in one write, the
        shared head built by the bridge rather than by the server."""
        head = None
        if self.direct is not None and start is _START:
            assert self.bridge is not None
            head = self.bridge.start_chunked(200, _HEAD)
        if head is None:
            await self.send(start)
        body = _HEARTBEAT + _retry_event(self.welcome())
        if self.direct is not None:
            self.direct.write_bytes((head or b"") + http_chunk(body))
        else:
            await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def send_batch(self, batch: Sequence[Message]) -> None:
        # In pieces: over HTTP/2 the server buffers what each send hands it whole before it
        # waits for the peer's flow-control credit, so a piece bounds what it holds per stream.
        body = bytearray()
        for message in batch:
            body += message.sse
            if len(body) >= SEND_PIECE_BYTES:
                await self.send({"type": "http.response.body", "body": bytes(body), "more_body": True})
                body.clear()
        if body:
            await self.send({"type": "http.response.body", "body": bytes(body), "more_body": True})

    def heartbeat(self) -> None:
        if self.direct is not None:
            self.direct.write_if_room(_PING_CHUNK if self.visible_heartbeat else _HEARTBEAT_CHUNK)
        elif self._beat is None:
            self._beat = asyncio.ensure_future(self._send_heartbeat())

    async def _send_heartbeat(self) -> None:
        try:
            body = _PING if self.visible_heartbeat else _HEARTBEAT
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            self._beat = None

    async def send_ending(self, closing: Closing) -> None:
        """A restart says when to come back; an expired token or a slow reader just ends."""
        body = b""
        if closing.code == Close.RESTARTING:
            body = _retry_event()
        elif closing is BACKEND_DOWN:
            body = _retry_event(_BACKEND_DOWN_EVENT)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
