"""A subscriber connection's life after its welcome, shared by WebSocket and SSE.

No task of its own: hub messages are written from the fan-out while the socket takes
them (``DirectWriter``); when it is backed up they queue in the outbox and a
short-lived flush task writes them in one go. A slot in the process's timer wheel
(timer_wheel.py) sends heartbeats, checks token expiry and (WebSocket) silence.
Whatever ends the connection first (a full outbox, the token, the server draining,
the peer's own misbehaviour) sends the ending once; a peer that does not take it
within ``CLOSE_GRACE_S`` is dropped. The connection's own task only reads what the
peer sends (``WebSocketConnection.received``) until it leaves.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar

from hubbub.auth import Principal
from hubbub.errors import Close
from hubbub.hub.backends.base import BackendUnavailable
from hubbub.hub.message import Message
from hubbub.hub.outbox import SlowConsumer, Subscription
from hubbub.transports.channels import client_names
from hubbub.transports.common import Services, welcome_frame
from hubbub.transports.hypercorn_bridge import CLOSE_GRACE_S, Bridge
from hubbub.transports.socket_writer import DirectWriter

log = logging.getLogger(__name__)
connections_log = logging.getLogger("hubbub.connections")  # one line as each opens and closes

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Closing:
    """Why a connection ends: a WebSocket close code and reason (SSE maps them to its ending)."""

    code: int
    reason: str = ""


SLOW_CONSUMER = Closing(Close.TRY_AGAIN_LATER, "slow consumer: resume from your last id")
TOKEN_EXPIRED = Closing(Close.UNAUTHORIZED, "token expired")
RESTARTING = Closing(Close.RESTARTING, "server restarting")
BACKEND_DOWN = Closing(Close.TRY_AGAIN_LATER, "backend unavailable")
PEER_GONE = Closing(Close.NORMAL, "")
# A write through the server that the peer does not take within this long is a slow consumer
# (the direct path does not wait: it queues in the bounded outbox instead).
SEND_TIMEOUT_S = 10.0
TOO_BIG = Closing(Close.TOO_LARGE, "message too big")
INTERNAL_ERROR = Closing(Close.INTERNAL_ERROR, "internal error")
LOGGED_CHANNELS = 5  # a connection of many channels names this many in its log lines, then counts


class LiveConnection:
    """Subclasses say how a message, a heartbeat and the ending go on their wire."""

    __slots__ = ("svc", "principal", "sub", "room", "multi", "joined", "send", "bridge", "direct", "closing",
                 "wheel_slot", "_loop", "_flusher", "_ender", "_abort", "_opened")

    transport: ClassVar[str]  # the metrics' label: websocket, sse
    frame_of: ClassVar[attrgetter[bytes]]  # a Message's bytes on this wire
    checks_silence: ClassVar[bool] = False  # WebSocket: close a peer silent for IDLE_TIMEOUT

    def __init__(self, svc: Services, principal: Principal | None, sub: Subscription,
                 scope: dict[str, Any], send: Send, room: str | None, bridge: Bridge | None,
                 *, multi: bool = False) -> None:
        self.svc = svc
        self.principal = principal  # None: no user (/ws/echo)
        self.sub = sub
        self.room = room  # /ws/chat and /sse/chat: the one room
        self.multi = multi  # /ws and /sse: any set of channels (see channels.py)
        self.joined: tuple[str, ...] = ()  # the rooms it announced itself in (a set costs 216 B)
        self.send = send
        self.bridge = bridge  # None: not Hypercorn, or the fast path is off
        self.direct: DirectWriter | None = None
        if bridge is not None and self.wire_allows_direct(scope):
            self.direct = bridge.direct_writer(self.frame_of, svc.writes)
        self.closing: Closing | None = None
        self._loop = asyncio.get_running_loop()
        self._flusher: asyncio.Task[None] | None = None
        self._ender: asyncio.Task[None] | None = None
        self.wheel_slot: int | None = None  # the timer wheel's: where its next beat is
        self._abort: asyncio.TimerHandle | None = None
        self._opened: float | None = None  # when ``open`` ran; None again once closed

    @property
    def endpoint(self) -> str:
        """The metrics' label: chat, notifications, channels or echo."""
        if self.principal is None:
            return "echo"
        return "channels" if self.multi else "chat" if self.room is not None else "notifications"

    # -- wire, per transport -----------------------------------------------------

    def wire_allows_direct(self, scope: dict[str, Any]) -> bool:
        return True

    def welcome(self) -> str:
        """The welcome frame: its channel, or on /ws and /sse the names of its set."""
        assert self.principal is not None
        channels = self.sub.channels
        return welcome_frame(client_names(channels) if self.multi else channels[0], self.principal.user,
                             self.sub.recovered, self.svc.settings.heartbeat_interval_s)

    async def send_batch(self, batch: Sequence[Message]) -> None:
        """Writes a batch through the server (no direct writer: HTTP/2, compression, …)."""
        raise NotImplementedError

    def heartbeat(self) -> None:
        raise NotImplementedError

    async def send_ending(self, closing: Closing) -> None:
        raise NotImplementedError

    # -- life ----------------------------------------------------------------------

    async def open(self) -> None:
        """Counts and logs the connection, takes its messages, joins its rooms. Then the
        endpoint reads the peer's frames itself until it leaves, and awaits ``close`` in a
        ``finally`` around both: a method around the read loop would keep one more coroutine
        frame for the connection's whole life (~0.2-0.3 KB)."""
        self._opened = time.monotonic()
        metrics = self.svc.metrics
        opened, connections = metrics.live(self.transport, self.endpoint)
        opened.inc()
        connections.inc()
        if connections_log.isEnabledFor(logging.INFO):
            user, channel = self._log_names()
            fields = {"user": user, "transport": self.transport, "channel": channel}
            connections_log.info("connection opened: %s %s %s", user, self.transport, channel,
                                 extra={"fields": fields})
        for subscribed in self.sub.channels:
            metrics.subscribed(subscribed).inc()
        self.sub.attach(self, self.direct.try_write if self.direct is not None else None)
        if self.bridge is not None:
            self.bridge.listener = self
        if self.sub.backlog or self.sub.ended:  # a replay queued before we listened
            self.on_ready()
        # Clients that connected together (after a restart) do not beat together.
        first = self._next_beat(random.uniform(0.5, 1.0) * self.svc.settings.heartbeat_interval_s)
        if first is not None:
            self.svc.wheel.add(self, first)
        try:
            for room in [c for c in self.sub.channels if c.startswith("room:")]:
                await self.join(room)
        except BackendUnavailable:
            self.end(BACKEND_DOWN)
        if self.joined == self.sub.channels:  # /ws/chat, /sse/chat: one tuple kept, not two equal ones
            self.joined = self.sub.channels

    async def close(self) -> None:
        """Undoes ``open`` once the peer is gone: leaves its rooms; never raises for the peer."""
        if self._opened is None:
            return
        metrics = self.svc.metrics
        if connections_log.isEnabledFor(logging.INFO):
            self._log_closed(time.monotonic() - self._opened)
        self._opened = None
        _, connections = metrics.live(self.transport, self.endpoint)
        connections.dec()
        for subscribed in self.sub.channels:
            metrics.subscribed(subscribed).dec()
        self.sub.detach()
        if self.bridge is not None:
            self.bridge.listener = None
        if self.direct is not None:
            self.direct.close()
        self.svc.wheel.remove(self)
        if self._abort is not None:
            self._abort.cancel()
        for task in (self._flusher, self._ender):
            if task is not None:
                task.cancel()
        for room in tuple(self.joined):
            await self.leave(room)

    def _log_names(self) -> tuple[str, str]:
        """The user and the channel(s) as the connection log lines name them."""
        channels = self.sub.channels
        channel = ",".join(channels[:LOGGED_CHANNELS if self.multi else 1]) or "-"
        if self.multi and len(channels) > LOGGED_CHANNELS:
            channel += f",+{len(channels) - LOGGED_CHANNELS}"
        return (self.principal.user if self.principal is not None else "-"), channel

    def _log_closed(self, duration_s: float) -> None:
        user, channel = self._log_names()
        closed = {"duration_s": round(duration_s, 3), "messages_sent": self.sub.sent,
                  "close_code": self.closing.code if self.closing is not None else Close.NORMAL}
        connections_log.info("connection closed: %s %s %s after %.1f s, %d messages, close %d", user,
                             self.transport, channel, closed["duration_s"], closed["messages_sent"],
                             closed["close_code"],
                             extra={"fields": {"user": user, "transport": self.transport, "channel": channel,
                                               **closed}})

    async def join(self, channel: str) -> None:
        """Announces this connection in a room (presence; the user's first one sends ``join``)."""
        if self.principal is not None and channel not in self.joined:
            await self.svc.hub.join(channel, self.principal.user, self.sub.connection_id)
            self.joined += (channel,)

    async def leave(self, channel: str) -> None:
        """Takes this connection out of a room's presence; never raises."""
        if self.principal is None or channel not in self.joined:
            return
        self.joined = tuple(c for c in self.joined if c != channel)
        try:
            await self.svc.hub.leave(channel, self.principal.user, self.sub.connection_id)
        except BackendUnavailable:
            log.info("could not announce %s leaving %s: backend unavailable", self.principal.user, channel)

    def end(self, closing: Closing) -> None:
        """Ends the connection once: no more messages, then the ending (after the backlog when
        the server restarts), and the TCP connection dropped if the peer does not take it."""
        if self.closing is not None:
            return
        self.closing = closing
        if closing.code == Close.TOO_LARGE:
            self.svc.metrics.dropped.labels("too_big").inc()
        self.sub.stop_writing()
        self.sub.close()  # nothing new is queued; waiters on the outbox wake up
        if closing is not RESTARTING and self._flusher is not None:
            self._flusher.cancel()  # stuck on a peer that stopped reading, or moot
        self._abort = self._loop.call_later(CLOSE_GRACE_S, self.abort)
        self._ender = self._loop.create_task(self._send_ending(closing))

    def too_big(self) -> None:
        """The bridge refused a message over MAX_MESSAGE_BYTES before buffering it."""
        self.end(TOO_BIG)

    def abort(self) -> None:
        if self.bridge is not None:
            self.bridge.abort()

    async def _send_ending(self, closing: Closing) -> None:
        try:
            if self._flusher is not None:
                await asyncio.wait([self._flusher])
            if self.direct is not None:
                self.direct.close()  # the ending goes through the server, after all we wrote
            await self.send_ending(closing)
        except (OSError, RuntimeError):
            pass  # the peer is gone; the server ends the request

    # -- outbox ------------------------------------------------------------------------

    def on_ready(self) -> None:
        """The subscription queued a message, overflowed or ended."""
        sub = self.sub
        if self.closing is not None:
            return
        if sub.overflowed:
            self.svc.metrics.dropped.labels("slow_consumer").inc()
            self.end(SLOW_CONSUMER)
        elif sub.closed:  # the hub closed it: the server is draining
            self.end(RESTARTING)
        elif self._flusher is None:
            self._flusher = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while batch := self.sub.take():
                if self.direct is not None:
                    await self.direct.write(batch)
                else:  # through the server (HTTP/2, compression): it may wait on the peer
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await self.send_batch(batch)
                        if self.bridge is not None:
                            await self.bridge.sent()  # one batch at a time in the server's hands
        except TimeoutError:
            self.svc.metrics.dropped.labels("slow_consumer").inc()
            self.end(SLOW_CONSUMER)  # e.g. an HTTP/2 stream given no flow-control credit
        except (OSError, RuntimeError):
            self.end(PEER_GONE)
        except SlowConsumer:
            pass  # on_ready has ended the connection
        finally:
            self._flusher = None

    # -- timer -------------------------------------------------------------------------

    def tick(self) -> float | None:
        """Its beat: token expiry, silence, then a heartbeat. Returns when the next is due."""
        if self.closing is not None:
            return None
        settings = self.svc.settings
        delay = self._next_beat(settings.heartbeat_interval_s)
        if delay is None:
            return None
        limit = settings.idle_timeout_s
        if self.checks_silence and self.bridge is not None and self.bridge.idle_for() > limit:
            self.end(Closing(Close.TRY_AGAIN_LATER, f"nothing received for {limit:.0f} s"))
            return None
        self.heartbeat()
        return delay

    def _next_beat(self, interval_s: float) -> float | None:
        """Seconds to the next beat: the interval, or sooner for a silence check or the token's
        expiry. None once the token has expired (the connection is ended)."""
        if self.checks_silence:
            interval_s = min(interval_s, self.svc.settings.idle_timeout_s)
        left = self.principal.seconds_left() if self.principal is not None else None
        if left is None:
            return interval_s
        if left <= 0:
            self.end(TOKEN_EXPIRED)
            return None
        return min(interval_s, left)
