"""One connection's subscription and its bounded outbox: the hub offers without waiting,
the connection drains it.

A full outbox marks the subscriber slow; the connection then ends (WebSocket 1013,
SSE end of stream) and the client resumes from history.

Two ways to consume: a live connection ``attach``es its socket writer
(transports/socket_writer.py, ``DirectWriter.try_write``: a message goes straight to the
socket while it takes it, else it is queued here) and a listener told when something is
queued or the subscription ended, then ``take()``s; server-side code awaits
``next_batch()``. Idle subscriptions hold no asyncio objects: the events behind the
awaitable API are made on first use. docs/architecture.md follows one message through.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from hubbub.hub.message import History, Message


class Listener(Protocol):
    def on_ready(self) -> None: ...


class SlowConsumer(Exception):
    """The outbox overflowed: the peer reads slower than messages arrive."""


class Subscription:
    """Messages for one connection, in id order, each once; plus that connection's own frames."""

    __slots__ = (
        "channels", "connection_id", "recovered", "_outbox", "_maxsize", "_changed",
        "_held", "held_drops", "sent", "_epoch", "_last_seq", "overflowed", "closed", "listener", "write_now",
    )

    def __init__(self, channels: tuple[str, ...], connection_id: str, maxsize: int) -> None:
        self.channels = channels
        self.connection_id = connection_id
        self.recovered: bool | None = None
        self._outbox: deque[Message] | None = None  # None while empty
        self._maxsize = maxsize
        self._changed: asyncio.Event | None = None  # made by the first awaiting consumer
        self._held: list[Message] | None = None
        self.held_drops = 0  # times the held live messages were let go (see ``offer``)
        self.sent = 0  # channel messages handed on (not acks, errors, pongs): log line, /metrics
        self._epoch = ""
        self._last_seq = 0
        self.overflowed = False
        self.closed = False
        # Set by the transport: told (``on_ready()``) when the outbox turns non-empty, overflows
        # or closes. The connection itself, not a bound method: one object less per connection.
        self.listener: Listener | None = None
        # Set by the transport: writes a message at once if the socket can take it (no task
        # switch per message); returns False when it must be queued instead.
        self.write_now: Callable[[Message], bool] | None = None

    @property
    def backlog(self) -> int:
        """Messages queued and not yet taken."""
        return len(self._outbox) if self._outbox else 0

    @property
    def ended(self) -> bool:
        return self.overflowed or self.closed

    @property
    def last_id(self) -> str | None:
        return f"{self._epoch}-{self._last_seq}" if self._last_seq else None

    def offer(self, message: Message) -> None:
        """Called by the hub for every message of its channels; never blocks.

        The hot path of fan-out: kept flat, so a live message costs one call down to the socket.
        """
        if message.origin is not None and message.origin == self.connection_id:
            return  # the sender gets an ack instead of its own message
        if self._held is not None:
            self._held.append(message)
            if len(self._held) > self._maxsize:
                # A long replay: what is held is in history too, and the hub pages on
                # through history until it has caught up (``held_drops`` tells it).
                self._held = []
                self.held_drops += 1
            return
        seq = message.seq
        if seq is not None:
            if message.epoch == self._epoch and seq <= self._last_seq:
                return  # already delivered (replay/live seam, or a backend catch-up)
            self._epoch, self._last_seq = message.epoch, seq
        if self.overflowed or self.closed:
            return
        self.sent += 1
        if self._outbox is None and self.write_now is not None and self.write_now(message):
            return
        self._queue(message)

    def offer_live(self, frames: list[Message], together: Message) -> None:
        """A window's join/leave frames (no ids, no origin): written as ``together`` (their
        bytes back to back) when the socket takes it at once, else offered one by one."""
        if (self._held is None and self._outbox is None and not self.ended
                and self.write_now is not None and self.write_now(together)):
            self.sent += len(frames)
            return
        for message in frames:
            self.offer(message)

    def attach(self, listener: Listener, write_now: Callable[[Message], bool] | None) -> None:
        """Connects a live connection: ``write_now`` writes a message at once if the socket
        takes it (False: queue it), ``listener.on_ready()`` hears of a queue, an overflow or
        the end."""
        self.write_now = write_now
        self.listener = listener

    def stop_writing(self) -> None:
        """From now on everything is queued (the connection is ending)."""
        self.write_now = None

    def detach(self) -> None:
        self.write_now = self.listener = None

    def send_frame(self, frame: str | Message) -> None:
        """Queues a frame of this connection's own (ack, error, pong; JSON text or an encoded
        Message) behind earlier messages."""
        self._append(Message("", frame) if isinstance(frame, str) else frame)

    def hold(self) -> None:
        """Holds live messages back while history is replayed (``replay_page``, ``go_live``)."""
        self._held = []

    def replay(self, history: History | None) -> None:
        """Queues one page of history (or a resync), then goes live."""
        if history is not None:
            self.recovered = history.recovered
            if history.recovered:
                self.replay_page(history.messages)
            else:
                self.resync()
        self.go_live()

    def replay_page(self, messages: list[Message]) -> None:
        """Queues replayed messages; live ones stay held until ``go_live``."""
        for message in messages:
            self._push(message)

    def resync(self) -> None:
        """Tells the client that messages were lost: it refetches history (GET …/messages)."""
        self._append(Message("", '{"type":"resync"}'))

    def go_live(self) -> None:
        """Queues the held live messages, de-duplicated at the seam, and stops holding."""
        held, self._held = self._held or [], None
        for message in held:
            self._push(message)

    def _push(self, message: Message) -> None:
        seq = message.seq
        if seq is not None:
            if message.epoch == self._epoch and seq <= self._last_seq:
                return  # already delivered (replay/live seam, or a backend catch-up)
            self._epoch, self._last_seq = message.epoch, seq
        if not self.ended:
            self.sent += 1
        self._append(message)

    def _append(self, message: Message) -> None:
        if self.overflowed or self.closed:
            return
        if self._outbox is None and self.write_now is not None and self.write_now(message):
            return
        self._queue(message)

    def _queue(self, message: Message) -> None:
        outbox = self._outbox
        if outbox is None:  # None while empty: idle subscriptions hold no deque
            self._outbox = deque((message,))
            self._signal()
        elif len(outbox) >= self._maxsize:
            self._overflow()
        else:
            outbox.append(message)

    def _overflow(self) -> None:
        if self.overflowed:
            return
        self.overflowed = True
        self._outbox = None
        self._signal()

    def close(self) -> None:
        """Ends the subscription; what is queued can still be taken."""
        if not self.closed:
            self.closed = True
            self._signal()

    def _signal(self) -> None:
        if self._changed is not None:
            self._changed.set()
        if self.listener is not None:
            self.listener.on_ready()

    def take(self) -> list[Message]:
        """Everything queued, oldest first, without waiting ([] if nothing is).

        Raises SlowConsumer once the outbox has overflowed.
        """
        if self.overflowed:
            raise SlowConsumer
        if not self._outbox:
            return []
        batch = list(self._outbox)
        self._outbox = None
        if self._changed is not None:
            self._changed.set()  # wakes drained()
        return batch

    async def _changes(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.clear()
        await self._changed.wait()

    async def next_batch(self) -> list[Message]:
        """Everything queued, oldest first (waits for at least one); [] once closed and empty.

        Raises SlowConsumer once the outbox has overflowed.
        """
        while not self._outbox:
            if self.overflowed:
                raise SlowConsumer
            if self.closed:
                return []
            await self._changes()
        return self.take()

    async def drained(self) -> None:
        """Waits until everything queued was taken (or the subscription ended)."""
        while self._outbox and not self.ended:
            await self._changes()
