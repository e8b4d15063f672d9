"""One connection's bounded outbox: the hub appends without waiting, the connection's writer drains.

A full outbox marks the subscriber slow; its writer then ends the connection
(WebSocket 1013, SSE end of stream) and the client resumes from history.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from app.hub.message import History, Message


class SlowConsumer(Exception):
    """The outbox overflowed: the peer reads slower than messages arrive."""


class Subscription:
    """Messages for one connection, in id order, each once; plus that connection's own frames."""

    __slots__ = (
        "channels", "connection_id", "recovered", "_outbox", "_maxsize",
        "_wakeup", "_drained", "_held", "_epoch", "_last_seq", "overflowed", "closed", "on_overflow",
        "write_now",
    )

    def __init__(self, channels: tuple[str, ...], connection_id: str, maxsize: int) -> None:
        self.channels = channels
        self.connection_id = connection_id
        self.recovered: bool | None = None
        self._outbox: deque[Message] = deque()
        self._maxsize = maxsize
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._held: list[Message] | None = None
        self._epoch = ""
        self._last_seq = 0
        self.overflowed = False
        self.closed = False
        # Set by the transport: ends a connection whose writer is stuck on a peer that stopped reading.
        self.on_overflow: Callable[[], None] | None = None
        # Set by the transport: writes a message at once if the socket can take it (no task
        # switch per message); returns False when it must be queued instead.
        self.write_now: Callable[[Message], bool] | None = None

    @property
    def backlog(self) -> int:
        """Messages queued and not yet taken by the writer."""
        return len(self._outbox)

    async def drained(self) -> None:
        """Waits until the writer has taken everything queued (or the subscription ended)."""
        while self._outbox and not (self.overflowed or self.closed):
            self._drained.clear()
            await self._drained.wait()

    @property
    def last_id(self) -> str | None:
        return f"{self._epoch}-{self._last_seq}" if self._last_seq else None

    def offer(self, message: Message) -> None:
        """Called by the hub for every message of its channels; never blocks."""
        if message.origin is not None and message.origin == self.connection_id:
            return  # the sender gets an ack instead of its own message
        if self._held is not None:
            self._held.append(message)
            if len(self._held) > self._maxsize:
                self._overflow()
            return
        self._push(message)

    def send_frame(self, json_text: str) -> None:
        """Queues a frame of this connection's own (ack, error, pong) behind earlier messages."""
        self._append(Message("", json_text))

    def hold(self) -> None:
        """Holds live messages back while history is replayed (see ``replay``)."""
        self._held = []

    def replay(self, history: History | None) -> None:
        """Queues the replayed history, then the held live messages, de-duplicated at the seam."""
        held, self._held = self._held or [], None
        if history is not None:
            self.recovered = history.recovered
            if history.recovered:
                for message in history.messages:
                    self._push(message)
            else:  # the client refetches history (GET …/messages), then goes on live
                self._append(Message("", '{"type":"resync"}'))
        for message in held:
            self._push(message)

    def _push(self, message: Message) -> None:
        seq = message.seq
        if seq is not None:
            if message.epoch == self._epoch and seq <= self._last_seq:
                return  # already delivered (replay/live seam, or a backend catch-up)
            self._epoch, self._last_seq = message.epoch, seq
        self._append(message)

    def _append(self, message: Message) -> None:
        if self.overflowed or self.closed:
            return
        if not self._outbox and self.write_now is not None and self.write_now(message):
            return
        if len(self._outbox) >= self._maxsize:
            self._overflow()
            return
        self._outbox.append(message)
        self._wakeup.set()

    def _overflow(self) -> None:
        if self.overflowed:
            return
        self.overflowed = True
        self._outbox.clear()
        self._wakeup.set()
        self._drained.set()
        if self.on_overflow is not None:
            self.on_overflow()

    def close(self) -> None:
        """Wakes the writer, which then sees an empty, closed outbox and ends."""
        self.closed = True
        self._wakeup.set()
        self._drained.set()

    async def next_batch(self) -> list[Message]:
        """Everything queued, oldest first (waits for at least one); [] once closed.

        Raises SlowConsumer once the outbox has overflowed.
        """
        while not self._outbox:
            if self.overflowed:
                raise SlowConsumer
            if self.closed:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.overflowed:
            raise SlowConsumer
        batch = list(self._outbox)
        self._outbox.clear()
        self._drained.set()
        return batch
