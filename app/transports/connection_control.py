"""What Hypercorn does not expose over ASGI: last byte received, pings, direct writes, abort.

ASGI has no ping/pong events, no way to drop a connection whose peer stopped
reading (Hypercorn has no write timeout: a send to such a peer waits forever),
and one write per WebSocket message (the cost that bounds fan-out throughput).
``install()`` wraps Hypercorn's WebSocket and HTTP streams so each scope carries
a ``ConnectionControl`` under ``scope["extensions"]["hubbub.connection"]``.
Under another server the extension is absent and callers degrade: no idle
detection, slow consumers are only closed when their writer is free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.hub.message import Message

log = logging.getLogger(__name__)

EXTENSION = "hubbub.connection"
_PING_FRAME = b"\x89\x00"  # FIN + ping, no payload, unmasked (RFC 6455 §5.5.2)


class ConnectionControl:
    __slots__ = ("_stream", "last_received", "_pinging")

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.last_received = time.monotonic()
        self._pinging: asyncio.Future[None] | None = None

    def idle_for(self) -> float:
        """Seconds since the peer last sent anything (data, ping, pong or close)."""
        return time.monotonic() - self.last_received

    def ping(self) -> None:
        """Sends a WebSocket protocol ping (browsers answer it by themselves), unless the socket
        is backed up: a peer that is not reading meets the idle check or the outbox bound."""
        writer = self._tcp_writer() if self._is_h11() else None
        if writer is not None:  # a control frame: never compressed, the same on every connection
            transport = writer.transport
            if not transport.is_closing() and (
                    transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]):
                transport.write(_PING_FRAME)
            return
        if self._pinging is None:  # HTTP/2: the frame goes through Hypercorn's stream
            self._pinging = asyncio.ensure_future(self._ping_through_stream())

    async def _ping_through_stream(self) -> None:
        from wsproto.events import Ping

        try:
            await self._stream._send_wsproto_event(Ping())
        finally:
            self._pinging = None

    def _is_h11(self) -> bool:
        protocol = getattr(self._stream.send, "__self__", None)
        return type(protocol).__name__ == "H11Protocol"

    def abort(self) -> None:
        """Drops the TCP connection at once, discarding unsent data."""
        writer = self._tcp_writer()
        if writer is not None:
            writer.transport.abort()

    def _tcp_writer(self) -> asyncio.StreamWriter | None:
        # WSStream/HTTPStream.send -> H11Protocol.stream_send; its .send -> TCPServer.protocol_send.
        protocol = getattr(self._stream.send, "__self__", None)
        tcp_server = getattr(getattr(protocol, "send", None), "__self__", None)
        return getattr(tcp_server, "writer", None)

    def direct_writer(self, encode: Callable[[Message], bytes],
                      batcher: WriteBatcher) -> DirectWriter | None:
        """A writer of pre-encoded frames straight to the socket, when the wire allows it:
        HTTP/1.1 (chunked SSE bodies) or a WebSocket with no extension negotiated."""
        if not self._is_h11():
            return None  # HTTP/2 streams share a connection: keep Hypercorn's framing
        connection = getattr(self._stream, "connection", None)  # wsproto, WebSockets only
        proto = getattr(connection, "_proto", None)
        if proto is not None and any(e.enabled() for e in proto.extensions):
            return None  # permessage-deflate: frames differ per connection
        writer = self._tcp_writer()
        return None if writer is None else DirectWriter(writer, encode, batcher)


class WriteBatcher:
    """Frames for one socket in one turn of the event loop leave in one write.

    One publish fans out to every subscriber in one go, and several publishes often run
    in the same turn (many POSTs read in one poll, several messages in one Redis read):
    each socket then takes one syscall for all of them instead of one each. The write
    happens at the end of the turn, so nothing waits longer than the turn itself.
    """

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due: list[DirectWriter] = []

    def add(self, writer: DirectWriter) -> None:
        if not self._due:
            asyncio.get_running_loop().call_soon(self._flush)
        self._due.append(writer)

    def _flush(self) -> None:
        due, self._due = self._due, []
        for writer in due:
            writer.flush()


class DirectWriter:
    """Writes each message's shared, pre-encoded frame to the transport without awaiting.

    While the transport's buffer is below its high-water mark a message is taken at
    once (no task switch) and written with the rest of this turn's (``WriteBatcher``);
    past the mark the caller queues it and a flush task writes the backlog in one go
    and awaits the drain.
    """

    __slots__ = ("_writer", "_transport", "_encode", "_high_water", "_batcher", "_pending",
                 "_pending_bytes", "_room")

    def __init__(self, writer: asyncio.StreamWriter, encode: Callable[[Message], bytes],
                 batcher: WriteBatcher) -> None:
        self._writer = writer
        self._transport = writer.transport
        self._encode = encode
        self._high_water = writer.transport.get_write_buffer_limits()[1]
        self._batcher = batcher
        self._pending: list[bytes] | None = None  # this turn's frames
        self._pending_bytes = 0
        self._room = 0  # below the high-water mark when this turn began

    def try_write(self, message: Message) -> bool:
        """True when taken (or the connection is gone); False: queue it."""
        pending = self._pending
        if pending is not None:  # not the turn's first: the transport was checked then
            if self._pending_bytes > self._room:
                return False
            frame = self._encode(message)
            pending.append(frame)
            self._pending_bytes += len(frame)
            return True
        transport = self._transport
        if transport.is_closing():
            return True  # the peer left; its handler is ending
        room = self._high_water - transport.get_write_buffer_size()
        if room < 0:
            return False
        frame = self._encode(message)
        self._room = room
        self._pending = [frame]
        self._pending_bytes = len(frame)
        self._batcher.add(self)
        return True

    def flush(self) -> None:
        """Writes this turn's frames (the batcher calls it at the end of the turn)."""
        pending, self._pending, self._pending_bytes = self._pending, None, 0
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    async def write(self, messages: Sequence[Message]) -> None:
        self.flush()  # what this turn already took goes first
        if self._transport.is_closing():
            return
        encode = self._encode
        self._transport.write(b"".join([encode(m) for m in messages]))
        await self._writer.drain()

    def write_bytes(self, data: bytes) -> None:
        """Writes ``data`` after what this turn already took (the welcome: nothing is before it)."""
        self.flush()
        if not self._transport.is_closing():
            self._transport.write(data)

    def write_if_room(self, data: bytes) -> None:
        """Writes ``data`` unless the socket is gone or backed up (a heartbeat: skipped, not queued)."""
        transport = self._transport
        if not transport.is_closing() and transport.get_write_buffer_size() <= self._high_water:
            transport.write(data)


def control_of(scope: Mapping[str, Any]) -> ConnectionControl | None:
    extensions = scope.get("extensions") or {}
    control = extensions.get(EXTENSION)
    return control if isinstance(control, ConnectionControl) else None


_options = {"websocket_compression": False}


def install(*, websocket_compression: bool = False) -> None:
    """Wraps Hypercorn's streams once per process. Safe to call again.

    Without ``websocket_compression`` the permessage-deflate offer every browser makes
    is declined: compressing small JSON costs 35-50% of WebSocket throughput.
    """
    _options["websocket_compression"] = websocket_compression
    try:
        from hypercorn.protocol.events import Body, Data, Request
        from hypercorn.protocol.http_stream import HTTPStream
        from hypercorn.protocol.ws_stream import WSStream
    except ImportError:  # pragma: no cover - another server, or a Hypercorn that moved things
        log.warning("Hypercorn internals not found: idle detection and slow-client abort are off")
        return
    for cls in (WSStream, HTTPStream):
        if getattr(cls, "_hubbub_wrapped", False):
            continue
        original = cls.handle

        async def handle(self: Any, event: Any, _original: Any = original) -> None:
            if isinstance(event, Body | Data):
                control = getattr(self, "_hubbub_control", None)
                if control is not None:
                    control.last_received = time.monotonic()
            await _original(self, event)
            if isinstance(event, Request) and hasattr(self, "scope"):
                control = ConnectionControl(self)
                self._hubbub_control = control
                self.scope["extensions"][EXTENSION] = control
                handshake = getattr(self, "handshake", None)
                if handshake is not None and not _options["websocket_compression"]:
                    handshake.extensions = None  # negotiate no extension

        cls.handle = handle  # type: ignore[method-assign]
        setattr(cls, "_hubbub_wrapped", True)  # noqa: B010  # a marker on a foreign class
