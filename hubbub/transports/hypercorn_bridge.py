"""Everything hubbub takes from Hypercorn beyond ASGI: per connection, on its own live endpoints.

ASGI has no ping, no way to drop a peer that stopped reading (Hypercorn has no write
timeout: a send to such a peer waits forever), one write per message, no limit in bytes
on a WebSocket message, and no word of the worker shutting down. Hypercorn has all of it
on the stream object behind the ``send`` callable it hands the app for a request:

    send.__self__                       WSStream | HTTPStream: this request's stream
      .send.__self__                    H11Protocol (HTTP/1.1) or H2Protocol
        .send.__self__.writer           the TCP connection's asyncio.StreamWriter
        .send.__self__.reader           its StreamReader (lone pongs noted before it: pong_filter.py)
        .connection.buffer              (WebSocket) received bytes not yet handed to the stream
      .handshake.extensions             what the client offered (declined: set to None)
      (WSStream) .state, .handshake.accept(), .connection, .scope, .start_time
                                        to accept it here (accept_websocket)
      .buffer                           where a WebSocket message is gathered (limited here)
      .handle                           each event from the peer (wrapped on this instance)
      .context.terminated               set when the worker begins to shut down
      (HTTPStream) .state, .response    moved to RESPONSE when a head is written here (_note_head)
      (HTTP/1.1) .send.__self__.connection   the h11.Connection: its ._process_event() and
                                        ._cstate.keep_alive, to note a head written here
      (HTTP/2) .send.__self__.connection, .stream_buffers, ._flush(), ._close_stream()
                                        to reset one stream without touching its neighbours

Nothing is patched on a class: a host app's own requests and WebSockets are untouched.
These are private names, so the versions they were tested on are pinned in pyproject.toml,
``status()`` checks them once and start-up logs the result, and tests/e2e/test_fast_path.py
fails the day one changes. Outside the tested range or under another server, ``attach``
returns None, ``respond`` False, and callers take the plain ASGI path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NamedTuple, Protocol

from h11 import SEND_RESPONSE, SERVER, LocalProtocolError
from h11 import Connection as H11Connection
from h11 import Data as H11Data
from h11 import Response as H11Response

from hubbub.hub.message import Message
from hubbub.transports.pong_filter import PongFilter
from hubbub.transports.socket_writer import DirectWriter, WriteBatcher

log = logging.getLogger(__name__)

TESTED_HYPERCORN = ((0, 18),)  # (major, minor) releases whose internals this module knows
CLOSE_GRACE_S = 2.0  # a peer sent its close frame has this long to answer before it is dropped
_PING_FRAME = b"\x89\x00"  # FIN + ping, no payload, unmasked (RFC 6455 §5.5.2)
_CHUNKED = [(b"Transfer-Encoding", b"chunked")]  # what h11 adds to a head of unknown length


@cache
def status() -> tuple[bool, str]:
    """Whether the fast path can be on in this process, and why not when it cannot."""
    try:
        installed = version("hypercorn")
    except PackageNotFoundError:
        return False, "Hypercorn is not installed"
    major_minor = tuple(int(part) for part in installed.split(".")[:2] if part.isdigit())
    if major_minor not in TESTED_HYPERCORN:
        tested = ", ".join(f"{a}.{b}.x" for a, b in TESTED_HYPERCORN)
        return False, f"Hypercorn {installed} is outside the tested range ({tested})"
    try:
        from hypercorn.asyncio.tcp_server import TCPServer
        from hypercorn.protocol.events import Body, Data  # noqa: F401
        from hypercorn.protocol.h2 import H2Protocol, StreamBuffer
        from hypercorn.protocol.h11 import H11Protocol
        from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream  # noqa: F401
        from hypercorn.protocol.ws_stream import (  # noqa: F401
            ASGIWebsocketState,
            FrameTooLargeError,
            Handshake,
            WSStream,
        )
    except ImportError as error:
        return False, f"Hypercorn {installed} has moved its internals ({error})"
    missing = [f"{cls.__name__}.{name}" for cls, name in (
        (WSStream, "app_send"), (HTTPStream, "app_send"), (WSStream, "handle"),
        (WSStream, "_send_wsproto_event"), (H11Protocol, "stream_send"),
        (TCPServer, "protocol_send"), (H2Protocol, "_flush"), (H2Protocol, "_close_stream"),
        (StreamBuffer, "close"), (StreamBuffer, "drain"), (Handshake, "accept"),
        (ASGIWebsocketState, "HANDSHAKE"), (ASGIWebsocketState, "CONNECTED"),
    ) if not hasattr(cls, name)]
    if missing:
        return False, f"Hypercorn {installed} lacks {', '.join(missing)}"
    h11_state = getattr(H11Connection(SERVER), "_cstate", None)
    if not hasattr(H11Connection, "_process_event") or not hasattr(h11_state, "keep_alive"):
        return False, f"h11 {version('h11')} has moved its internals (Connection._process_event, ._cstate)"
    return True, f"Hypercorn {installed}"


class TooBigListener(Protocol):
    def too_big(self) -> None: ...


class Bridge:
    """One connection's stream in Hypercorn: its socket, its pings, its received bytes."""

    __slots__ = ("_stream", "_writer", "h11", "last_received", "listener", "compressed", "_pinging",
                 "_resetting")

    def __init__(self, stream: Any, writer: asyncio.StreamWriter | None, h11: bool) -> None:
        self._stream = stream
        self._writer = writer
        self.h11 = h11  # HTTP/1.1: this request owns the TCP connection
        self.last_received = time.monotonic()
        # Told (``too_big()``) when the peer sends a message over the limit: the connection
        # itself, not a bound method of it (64 B less per connection).
        self.listener: TooBigListener | None = None
        self.compressed = False
        self._pinging: asyncio.Future[None] | None = None
        self._resetting: asyncio.Future[None] | None = None

    @classmethod
    def attach(cls, send: Callable[..., Awaitable[None]], *, websocket: bool = False,
               compression: bool = False, max_message_bytes: int = 0) -> Bridge | None:
        """The bridge to the stream behind ``send``; None when the fast path is off or ``send``
        is not Hypercorn's (another server, a middleware in between).

        For a WebSocket, call it before accepting: it declines permessage-deflate unless
        ``compression``, limits messages to ``max_message_bytes``, and watches received bytes.
        """
        if not status()[0]:
            return None
        hypercorn = _hypercorn()
        stream = getattr(send, "__self__", None)
        if not isinstance(stream, hypercorn.streams):
            return None
        protocol: Any = getattr(stream.send, "__self__", None)
        h11 = isinstance(protocol, hypercorn.H11Protocol)
        tcp_server = getattr(protocol.send, "__self__", None) if h11 else None
        bridge = cls(stream, getattr(tcp_server, "writer", None), h11)
        if websocket and isinstance(stream, hypercorn.WSStream):
            bridge._take_websocket(stream, compression, max_message_bytes)
            if tcp_server is not None:  # HTTP/1.1: this connection's bytes are this stream's
                PongFilter.install(getattr(tcp_server, "reader", None),
                                   getattr(protocol.connection, "buffer", None), bridge)
        return bridge

    def _take_websocket(self, stream: Any, compression: bool, max_message_bytes: int) -> None:
        handshake = stream.handshake
        offered = handshake.extensions or []
        if compression:
            self.compressed = any(e.split(";")[0].strip() == "permessage-deflate" for e in offered)
        else:
            handshake.extensions = None  # negotiate no extension: frames stay shared bytes
        if max_message_bytes:
            stream.buffer = MessageBuffer(max_message_bytes, self)
        stream.handle = self._watched  # this stream only; it goes with the connection

    async def _watched(self, event: Any) -> None:
        """Every event the peer sends the stream, noted as it goes by, then handled as the
        stream's class does (a method, not a closure: ~0.2 KB less per connection)."""
        self.last_received = time.monotonic()
        stream = self._stream
        await type(stream).handle(stream, event)

    def too_big(self) -> None:
        """Hypercorn has sent close 1009; a peer that does not answer it is dropped."""
        if self.listener is not None:
            self.listener.too_big()
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self.abort)

    def idle_for(self) -> float:
        """Seconds since the peer last sent anything (data, ping, pong or close)."""
        return time.monotonic() - self.last_received

    def direct_writer(self, encode: Callable[[Message], bytes], batcher: WriteBatcher) -> DirectWriter | None:
        """A writer of pre-encoded frames straight to the socket: HTTP/1.1, no WebSocket extension."""
        if not self.h11 or self.compressed or self._writer is None:
            return None
        return DirectWriter(self._writer, encode, batcher)

    def start_chunked(self, status: int, header_block: bytes) -> bytes | None:
        """The head of a streamed response for the caller to write straight to the socket,
        ahead of its first chunk, in one write. Hypercorn's stream and h11 are moved on as
        if the server had sent it: the body's chunks and its end still go through them.

        Hypercorn builds a head through h11, which validates every header of every response
        again: about a tenth of an SSE connect's CPU. ``header_block``: the app's headers,
        encoded once by ``header_block()``. None when the head must go through the server
        (HTTP/2, HTTP/1.0, a closing connection, a request not in the expected state).
        """
        if self._writer is None or not _note_head(self._stream, status, _CHUNKED):
            return None
        return b"HTTP/1.1 %d \r\n%s%sTransfer-Encoding: chunked\r\n\r\n" % (
            status, header_block, _server_headers(self._stream.config))

    async def accept_websocket(self) -> bytes | None:
        """Accepts the WebSocket here: the 101 for the caller to write straight to the socket
        ahead of its first frame, in one write, with Hypercorn's stream left as its own accept
        leaves it (``WSStream._accept``: the handshake's headers and wsproto connection, the
        state, the access log line).

        Hypercorn sends the 101 through h11, which validates its headers, then through its
        lock and drain: ~7% of the server's CPU in a WebSocket connect. h11 is not told: once
        a connection is a WebSocket, Hypercorn reads and writes it past h11 for good (its
        ``H11WSConnection``). None, with nothing done, where the accept must go through the
        server: HTTP/2, an extension to negotiate (compression), Hypercorn's own pings
        configured, a stream past its handshake.
        """
        stream: Any = self._stream
        hypercorn = _hypercorn()
        if (self._writer is None or type(stream) is not hypercorn.WSStream
                or stream.state is not hypercorn.HANDSHAKE or stream.handshake.extensions
                or stream.config.websocket_ping_interval is not None):
            return None
        stream.state = hypercorn.CONNECTED
        status_code, headers, stream.connection = stream.handshake.accept(None, ())
        await stream.config.log.access(stream.scope, {"status": status_code, "headers": []},
                                       time.time() - stream.start_time)
        return b"HTTP/1.1 %d \r\n%s%s\r\n" % (status_code, _lines(headers), _server_headers(stream.config))

    def ping(self) -> None:
        """A WebSocket protocol ping (browsers answer by themselves), unless the socket is backed
        up: a peer that is not reading meets the idle check or the outbox bound anyway."""
        if self._writer is not None:  # HTTP/1.1: a control frame, never compressed
            transport = self._writer.transport
            if not transport.is_closing() and (
                    transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]):
                transport.write(_PING_FRAME)
        elif self._pinging is None:  # HTTP/2 (RFC 8441): the frame goes through the stream
            self._pinging = asyncio.ensure_future(self._ping_through_stream())

    async def _ping_through_stream(self) -> None:
        from wsproto.events import Ping

        try:
            await self._stream._send_wsproto_event(Ping())
        finally:
            self._pinging = None

    async def sent(self) -> None:
        """Returns once what this request handed the server has gone out. Over HTTP/1.1 the
        server's own send already waited for the socket. Over HTTP/2 it only buffers the
        stream's data until the peer grants flow-control credit, and lets the next send
        through whatever the buffer holds: a peer that grants none would make it buffer
        without bound. Callers wait here, under a timeout, before they send more."""
        if self.h11:
            return
        buffer = self._stream.send.__self__.stream_buffers.get(self._stream.stream_id)
        if buffer is not None:
            await buffer.drain()

    def abort(self) -> None:
        """Drops this request at once, discarding what was not sent: on HTTP/1.1 its TCP
        connection; on HTTP/2 its stream only (RST_STREAM), its neighbours going on."""
        if self._writer is not None:
            self._writer.transport.abort()
        elif not self.h11 and self._resetting is None:
            self._resetting = asyncio.ensure_future(self._reset_stream())

    async def _reset_stream(self) -> None:
        """What Hypercorn does when a client resets a stream, done from our side: reset it,
        free what its buffer holds (unblocking any send stuck on flow control), and tell
        the handler it is gone."""
        import h2.errors
        import h2.exceptions

        protocol: Any = self._stream.send.__self__
        stream_id = self._stream.stream_id
        try:
            protocol.connection.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.H2Error:
            pass  # already closed or reset
        buffer = protocol.stream_buffers.get(stream_id)
        if buffer is not None:
            await buffer.close()
        await protocol._flush()
        await protocol._close_stream(stream_id)

    def server_shutdown(self) -> Awaitable[None]:
        """Done when the worker serving this connection begins to shut down, whatever told it
        to (a signal to it or to Hypercorn's supervisor, or ``serve()``'s trigger). It holds
        the worker's context only, not this connection."""
        return self._stream.context.terminated.wait()  # type: ignore[no-any-return]


END_BODY = {"type": "http.response.body", "body": b"", "more_body": False}


def respond(send: Callable[..., Awaitable[None]], status_code: int, header_block: bytes,
            body: bytes) -> bool:
    """A whole response, head and body in one write straight to the socket, when ``send`` is
    Hypercorn's on HTTP/1.1. Hypercorn's stream and h11 are moved on as if they had sent
    both; the caller then ends the response through the server with ``END_BODY``, which
    closes the stream as Hypercorn does (its access log, the keep-alive recycle).

    For the chat POST's 202: h11 validating its head, and Hypercorn writing the head and
    the body apart, each with its lock and drain, cost ~9% of the server's CPU in many
    rooms. ``header_block``: the headers but Content-Length (``header_block()``), added
    here. False: nothing was done; send the response through the server.
    """
    if not status()[0]:
        return False
    stream: Any = getattr(send, "__self__", None)
    if type(stream) is not _hypercorn().HTTPStream:
        return False  # not a Hypercorn HTTP stream
    protocol: Any = getattr(stream.send, "__self__", None)
    tcp_server = getattr(getattr(protocol, "send", None), "__self__", None)
    transport = getattr(getattr(tcp_server, "writer", None), "transport", None)
    length = b"%d" % len(body)
    if (transport is None or transport.is_closing()
            or not _note_head(stream, status_code, [(b"content-length", length)])):
        return False
    if body:
        protocol.connection.send(H11Data(data=body))  # h11 counts it against the length
    transport.write(b"HTTP/1.1 %d \r\ncontent-length: %s\r\n%s%s\r\n%s" % (
        status_code, length, header_block, _server_headers(stream.config), body))
    return True


def _note_head(stream: Any, status_code: int, framing: list[tuple[bytes, bytes]]) -> bool:
    """Moves Hypercorn's HTTPStream and h11 on as if the server had sent a head of
    ``status_code`` with these framing headers. False, with nothing changed, where the head
    must go through the server: HTTP/2, HTTP/1.0, a connection that closes after this
    response (h11 would add Connection: close), a request not in the expected state."""
    hypercorn = _hypercorn()
    if getattr(stream, "state", None) is not hypercorn.REQUEST:
        return False
    protocol: Any = getattr(stream.send, "__self__", None)
    if type(protocol) is not hypercorn.H11Protocol:
        return False
    connection = protocol.connection
    if (type(connection) is not H11Connection or connection.our_state is not SEND_RESPONSE
            or connection.their_http_version != b"1.1" or not connection._cstate.keep_alive
            or protocol.keep_alive_requests >= protocol.config.keep_alive_max_requests):
        return False
    try:  # h11's own state change for a sent head, without building the bytes
        connection._process_event(connection.our_role,
                                  H11Response(status_code=status_code, headers=framing, _parsed=True))
    except LocalProtocolError:
        return False
    # For its access log: the status, and the length its default format logs.
    stream.response = {"type": "http.response.start", "status": status_code, "headers": framing}
    stream.state = hypercorn.RESPONSE
    return True


def header_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Response headers as a head carries them, for ``Bridge.start_chunked`` and
    ``respond``; h11 checks them here, once, as it would on every response."""
    headers = list(headers)
    H11Response(status_code=200, headers=headers)  # raises LocalProtocolError on a bad one
    return _lines(headers)


def _lines(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Headers as h11 writes them, unchecked: a line each, names as given."""
    return b"".join(b"%s: %s\r\n" % pair for pair in headers)


_server_head: tuple[int, Any, bytes] = (0, None, b"")


def _server_headers(config: Any) -> bytes:
    """What Hypercorn adds to every head (date, server, alt-svc), encoded once a second."""
    global _server_head
    second, cached_config, block = _server_head
    now = int(time.time())
    if now != second or config is not cached_config:
        block = _lines(config.response_headers("h11"))
        _server_head = (now, config, block)
    return block


class _Hypercorn(NamedTuple):
    H11Protocol: type[Any]
    HTTPStream: type[Any]
    WSStream: type[Any]
    streams: tuple[type[Any], type[Any]]  # WSStream, HTTPStream
    REQUEST: Any  # an HTTPStream's state before its response head,
    RESPONSE: Any  # and after
    HANDSHAKE: Any  # a WSStream's state before its accept,
    CONNECTED: Any  # and after


@cache
def _hypercorn() -> _Hypercorn:
    """Hypercorn's classes, imported once the fast path is known to be on (``status()``)."""
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
    from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream

    return _Hypercorn(H11Protocol, HTTPStream, WSStream, (WSStream, HTTPStream), ASGIHTTPState.REQUEST,
                      ASGIHTTPState.RESPONSE, ASGIWebsocketState.HANDSHAKE, ASGIWebsocketState.CONNECTED)


class MessageBuffer:
    """Gathers one WebSocket message for Hypercorn, in its buffer's place, limited in bytes.

    Hypercorn's own counts characters of text and keeps gathering past its limit; this one
    counts UTF-8 bytes and keeps nothing once a message is too big.
    """

    __slots__ = ("_parts", "_text", "length", "max_length", "_too_big", "_bridge")

    def __init__(self, max_length: int, bridge: Bridge) -> None:
        self._parts: list[Any] | None = None  # made per message: an idle connection keeps none
        self._text: bool | None = None
        self.length = 0
        self.max_length = max_length
        self._too_big = False
        self._bridge = bridge  # told when a message is too big (not a bound method: 64 B less)

    def extend(self, event: Any) -> None:
        from hypercorn.protocol.ws_stream import FrameTooLargeError
        from wsproto.events import TextMessage

        if self._too_big:
            raise FrameTooLargeError  # Hypercorn has closed 1009; drop whatever still comes
        data = event.data
        if self._text is None:
            self._text = isinstance(event, TextMessage)
        if isinstance(data, str) and not data.isascii():
            self.length += len(data.encode())
        else:
            self.length += len(data)
        if self.length > self.max_length:
            self._too_big, self._parts = True, None
            self._bridge.too_big()
            raise FrameTooLargeError
        if self._parts is None:
            self._parts = [data]
        else:
            self._parts.append(data)

    def clear(self) -> None:
        self._parts, self._text, self.length = None, None, 0

    def to_message(self) -> dict[str, Any]:
        parts = self._parts or ()
        if self._text:
            return {"type": "websocket.receive", "bytes": None, "text": "".join(parts)}
        return {"type": "websocket.receive", "bytes": b"".join(parts), "text": None}
