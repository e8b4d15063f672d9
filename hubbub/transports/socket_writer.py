"""The last step of a message's path: its shared, pre-encoded frame written straight to the socket.

One publish fans out to every subscriber in one go: each subscriber's frame is the same
bytes (``Message.ws_frame`` / ``Message.sse_chunk``), written without a task switch or an
await while the socket takes it, and all of one event-loop turn's frames leave in one
``write`` (``WriteBatcher``). Only HTTP/1.1 connections get one (hypercorn_bridge.py).

Invariants:
- Nothing is written after ``close()``: an SSE response that ended leaves its keep-alive
  connection to the server, and a late write would corrupt the next response on it.
- No empty write: an empty chunk is the end of a chunked body (``http_chunk`` refuses it).
- Bounded: past the transport's high-water mark ``try_write`` says no, and the caller
  queues in its bounded outbox; ``write`` then awaits the drain.
- Order: this turn's frames, then a batch, then the ending (which goes through the server
  after ``close()``), in the order they were given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from hubbub.hub.message import Message


class WriteBatcher:
    """Frames for one socket in one turn of the event loop leave in one write.

    Several publishes often run in the same turn (many POSTs read in one poll, several
    messages in one Redis read): each socket then takes one syscall for all of them
    instead of one each. The write happens at the end of the turn.
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
    """Writes pre-encoded frames of one connection to its transport."""

    __slots__ = ("_writer", "_transport", "_encode", "_high_water", "_batcher", "_pending",
                 "_pending_bytes", "_room", "closed")

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
        self.closed = False

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
        if self.closed or self._transport.is_closing():
            return True  # the stream is over; its handler is ending
        room = self._high_water - self._transport.get_write_buffer_size()
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
        # Its own statement: four targets would build and unpack a tuple on every flush.
        self._room = 0  # a cached small int, not an int object kept per idle connection
        if pending and self._writable():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    async def write(self, messages: Sequence[Message]) -> None:
        """Writes a backlog in one go and waits until the socket took it."""
        self.flush()  # what this turn already took goes first
        if not messages or not self._writable():
            return
        encode = self._encode
        self._transport.write(b"".join([encode(m) for m in messages]))
        await self._writer.drain()

    def write_bytes(self, data: bytes) -> None:
        """Writes ``data`` after what this turn already took (the welcome: nothing is before it)."""
        self.flush()
        if data and self._writable():
            self._transport.write(data)

    def write_if_room(self, data: bytes) -> None:
        """Writes ``data`` unless the socket is gone or backed up (a heartbeat: skipped, not queued)."""
        if data and self._writable() and self._transport.get_write_buffer_size() <= self._high_water:
            self._transport.write(data)

    def close(self) -> None:
        """Writes what this turn took, then nothing more: the server has the socket back."""
        self.flush()
        self.closed = True

    def _writable(self) -> bool:
        return not self.closed and not self._transport.is_closing()
