"""Pongs noted before Hypercorn reads them: the heartbeat of an idle WebSocket costs half.

Every ``HEARTBEAT_INTERVAL`` each WebSocket gets a ping, and the client's pong wakes
Hypercorn's reader task, passes h11's pass-through and wsproto's parser, and is dropped
there: about 20 µs of a core a pong, more than the ping and the silence check together
(docs/performance.md). A pong says only that the peer is alive, which the bridge notes
itself (``Bridge.last_received``).

``PongFilter`` takes the connection's received bytes before asyncio's StreamReader does
(an instance attribute of that one reader, nothing patched on a class), follows the frame
boundaries in them, and keeps back a chunk that is exactly one empty masked pong starting
at a frame boundary: what browsers and client libraries send in answer to the bridge's
empty ping. Every other byte goes on to the reader unchanged and in order. It is put in
only while nothing the client sent is still unread, so it sees the stream from a frame
boundary on.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

_PONG = 0x8A  # FIN + opcode pong
_MASKED_EMPTY = 0x80  # MASK bit, payload length 0


class Listener(Protocol):
    last_received: float


class PongFilter:
    """``reader.feed_data`` for one connection: every chunk but a lone empty pong."""

    __slots__ = ("_reader", "_bridge", "_left", "_head")

    def __init__(self, reader: asyncio.StreamReader, bridge: Listener) -> None:
        self._reader = reader
        self._bridge = bridge
        self._left = 0  # payload bytes of the current frame still to come
        self._head = b""  # the start of a frame header split between chunks

    @classmethod
    def install(cls, reader: object, unread: bytes | bytearray | None, bridge: Listener) -> bool:
        """Puts a filter in front of ``reader`` when nothing received is unread there nor in
        ``unread`` (the server's own buffer of it; None when unknown). False: not put in."""
        if type(reader) is not asyncio.StreamReader or unread is None or unread \
                or getattr(reader, "_buffer", True):  # asyncio's own buffer, not yet read
            return False
        reader.feed_data = cls(reader, bridge)  # type: ignore[method-assign, assignment]
        return True

    def __call__(self, data: bytes) -> None:
        if len(data) == 6 and data[0] == _PONG and data[1] == _MASKED_EMPTY \
                and not self._left and not self._head:
            self._bridge.last_received = time.monotonic()
            return
        self._scan(data)
        asyncio.StreamReader.feed_data(self._reader, data)

    def _scan(self, data: bytes) -> None:
        """Moves the frame boundary past ``data`` (RFC 6455 §5.2: 2 bytes, then 2 or 8 of
        extended length, then 4 of mask, then the payload)."""
        if self._head:
            data, self._head = self._head + data, b""
        pos, end, left = 0, len(data), self._left
        while left < end - pos:  # a header starts inside this chunk, at pos + left
            pos += left
            if end - pos < 2:
                break
            masked, length = data[pos + 1] & 0x80, data[pos + 1] & 0x7F
            size = 2 + (4 if masked else 0) + (2 if length == 126 else 8 if length == 127 else 0)
            if end - pos < size:
                break
            if length == 126:
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
            pos += size
            left = length
        else:
            self._left = left - (end - pos)
            return
        self._head, self._left = data[pos:], 0
