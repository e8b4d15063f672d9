"""Lean Redis connections for the hot paths: commands packed and replies parsed in C by
hiredis, nothing else in between.

``RedisLink`` carries the commands: each batch written whole, its replies matched to it in
order. redis-py spends ~110 µs of this process's CPU on a lone command (~30 µs each in a
pipeline of 30) in its pool, retry, packing and response layers; on this link the same
EVALSHA costs ~40 µs (~5 µs), most of it the socket's own syscalls (docs/performance.md).
Error replies come back as exceptions in their command's place (redis-py's classes), never
raised for the batch. A lost connection fails every batch in flight with
``redis.exceptions.ConnectionError``, a reply overdue by ``reply_timeout_s`` with
``TimeoutError`` (the connection is dropped: later replies could no longer be matched);
the next batch connects again. Retrying is the caller's choice (``AutoPipeline``).

``PubSubLink`` is the pub/sub connection: SUBSCRIBE, UNSUBSCRIBE and PING written as they
come, every reply read ahead into a bounded queue. redis-py's ``get_message`` costs ~45 µs
a message here, this ~12 µs. Reconnecting is the caller's (``RedisBackend``'s listener).

Both speak RESP2, connect from a redis://, rediss:// (no certificate check, as the
backend's other clients) or unix:// URL, and send AUTH, SELECT and CLIENT SETNAME first.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The error replies callers tell apart, as redis-py names them (BusyLoadingError is a
# ConnectionError: Redis is still loading its data, try again).
_ERRORS: dict[str, type[ResponseError | RedisConnectionError]] = {
    "NOSCRIPT": NoScriptError, "READONLY": ReadOnlyError, "LOADING": BusyLoadingError,
    "NOAUTH": AuthenticationError, "WRONGPASS": AuthenticationError,
}


def reply_error(text: str) -> Exception:
    """An error reply as redis-py would raise it."""
    return _ERRORS.get(text.split(" ", 1)[0], ResponseError)(text)


class _Batch:
    __slots__ = ("future", "left", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], size: int) -> None:
        self.future = future
        self.left = size
        self.replies: list[Any] = []


class PushListener(Protocol):
    def pushed(self, reply: Any) -> None: ...
    def lost(self, why: Exception) -> None: ...


class _Wire(asyncio.Protocol):
    """The socket: batches written whole, replies gathered into the oldest batch; with a
    ``listener``, a reply no batch waits for is pushed to it (pub/sub)."""

    def __init__(self, listener: PushListener | None = None) -> None:
        self._reader = hiredis.Reader(encoding="utf-8", replyError=reply_error)
        self._batches: deque[_Batch] = deque()
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        batches = self._batches
        try:
            while (reply := reader.gets()) is not False:
                if batches:
                    self.replied(reply)
                elif self._listener is not None:
                    self._listener.pushed(reply)
                else:
                    raise RedisConnectionError("a reply no command asked for")
        except Exception as exc:  # a protocol error: nothing later can be matched
            self.drop(exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(str(exc)))

    def replied(self, reply: Any) -> None:
        batch = self._batches[0]
        batch.replies.append(reply)
        batch.left -= 1
        if not batch.left:
            self._batches.popleft()
            if not batch.future.done():  # its caller may have been cancelled
                batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost ({exc or 'closed by the server'})"))

    def send(self, commands: Sequence[tuple[Any, ...]]) -> asyncio.Future[list[Any]]:
        """Writes the commands; the future has their replies."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        try:
            self.write(commands)
        except RedisConnectionError as exc:
            future.set_exception(exc)
            return future
        self._batches.append(_Batch(future, len(commands)))
        return future

    def write(self, commands: Sequence[tuple[Any, ...]]) -> None:
        """Writes the commands (tuples, as hiredis packs them), expecting no reply for them
        (pub/sub: pushed instead)."""
        if self.lost is not None or self._transport is None or self._transport.is_closing():
            raise self.lost or RedisConnectionError("connection to Redis closed")
        self._transport.write(b"".join([hiredis.pack_command(c) for c in commands]))

    def pause(self, paused: bool) -> None:
        """Stops (or resumes) reading: Redis holds what comes meanwhile, up to its limit."""
        if self._transport is not None and not self._transport.is_closing():
            if paused:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def drop(self, why: Exception) -> None:
        """Closes the socket at once and fails what is in flight with ``why``."""
        self._fail(why)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, why: Exception) -> None:
        if self.lost is not None:
            return
        self.lost = why
        while self._batches:
            future = self._batches.popleft().future
            if not future.done():
                future.set_exception(why)
                future.exception()  # marked retrieved: a cancelled caller never reads it
        if self._listener is not None:
            self._listener.lost(why)


class _Address:
    """Where and how to connect, from the URL."""

    def __init__(self, url: str, *, connect_timeout_s: float, reply_timeout_s: float,
                 name: str | None) -> None:
        params = parse_url(url)
        self._path: str | None = params.get("path")  # type: ignore[assignment]
        self._host = str(params.get("host", "localhost"))
        self._port = int(params.get("port", 6379))  # type: ignore[call-overload]
        self._tls: ssl.SSLContext | None = None
        if url.startswith("rediss://"):
            self._tls = ssl.create_default_context()
            self._tls.check_hostname, self._tls.verify_mode = False, ssl.CERT_NONE
        self._hello: list[tuple[Any, ...]] = []  # what a new connection sends first
        password, username = params.get("password"), params.get("username")
        if password is not None:
            self._hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if params.get("db"):
            self._hello.append(("SELECT", params["db"]))
        if name:
            self._hello.append(("CLIENT", "SETNAME", name))
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s

    async def open(self, wire_factory: Callable[[], _Wire]) -> _Wire:
        """A connected wire that has said hello, or ConnectionError / TimeoutError / the
        error Redis answered the hello with (a wrong password: AuthenticationError)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self._path is not None:
                    _, wire = await loop.create_unix_connection(wire_factory, self._path)
                else:
                    _, wire = await loop.create_connection(wire_factory, self._host, self._port,
                                                           ssl=self._tls)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc or type(exc).__name__}") from None
        if self._hello:
            try:
                async with asyncio.timeout(self.reply_timeout_s):
                    replies = await wire.send(self._hello)
            except TimeoutError:
                wire.drop(RedisTimeoutError("Redis did not answer the handshake"))
                raise RedisTimeoutError("Redis did not answer the handshake in time") from None
            except BaseException as exc:
                wire.drop(RedisConnectionError(f"handshake not finished ({type(exc).__name__})"))
                raise
            failed = next((r for r in replies if isinstance(r, Exception)), None)
            if failed is not None:
                wire.drop(failed)
                raise failed
        return wire


class RedisLink:
    """``execute(commands)``: their replies, in order; connects (again) when needed."""

    def __init__(self, url: str, *, connect_timeout_s: float = 2.0, reply_timeout_s: float = 5.0,
                 name: str | None = None) -> None:
        self._address = _Address(url, connect_timeout_s=connect_timeout_s,
                                 reply_timeout_s=reply_timeout_s, name=name)
        self._wire: _Wire | None = None
        self._connecting: asyncio.Task[_Wire] | None = None

    async def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        wire = self._wire
        if wire is None or wire.lost is not None:
            wire = await self._connected()
        try:
            async with asyncio.timeout(self._address.reply_timeout_s):
                return await wire.send(commands)
        except TimeoutError:
            wire.drop(RedisTimeoutError("Redis did not reply in time"))
            raise RedisTimeoutError(f"no reply from Redis within {self._address.reply_timeout_s} s") from None

    async def _connected(self) -> _Wire:
        """The live connection, made once however many batches ask at the same time."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _connect(self) -> _Wire:
        self._wire = await self._address.open(_Wire)
        return self._wire

    def close(self) -> None:
        """Drops the connection; batches in flight fail with ConnectionError."""
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._wire is not None:
            self._wire.drop(RedisConnectionError("the Redis link was closed"))
            self._wire = None


class PubSubLink:
    """One pub/sub connection, used once: ``connect()``, then ``subscribe``, ``unsubscribe``
    and ``ping`` (written at once, answered by pushes) and ``read`` (the pushes so far)."""

    # Pushes queued at most before reading stops (until the reader has taken half): Redis
    # holds the rest, up to its client-output-buffer-limit for pub/sub, then drops the
    # connection, and the listener reconnects and catches up from the streams.
    PAUSE_AT = 2_000

    def __init__(self, url: str, *, connect_timeout_s: float = 2.0, name: str | None = None) -> None:
        self._address = _Address(url, connect_timeout_s=connect_timeout_s,
                                 reply_timeout_s=connect_timeout_s, name=name)
        self._queue: deque[Any] = deque()
        self._wire: _Wire | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    async def connect(self) -> None:
        self._wire = await self._address.open(lambda: _Wire(listener=self))

    def subscribe(self, *topics: str) -> None:
        self._write(("SUBSCRIBE", *topics))

    def unsubscribe(self, *topics: str) -> None:
        self._write(("UNSUBSCRIBE", *topics))

    def ping(self) -> None:
        self._write(("PING",))

    def _write(self, command: tuple[str, ...]) -> None:
        if self._wire is None:
            raise RedisConnectionError("pub/sub link not connected")
        self._wire.write([command])

    async def read(self, timeout_s: float | None, limit: int) -> list[Any]:
        """Up to ``limit`` pushes (["message", topic, data], ["subscribe", topic, n], …), in
        order, waiting up to ``timeout_s`` for the first: [] when none came. Once the
        connection is lost and what it read is taken, ConnectionError."""
        queue = self._queue
        if not queue:
            if self._wire is not None and self._wire.lost is not None:
                raise self._wire.lost
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._waiter
            except TimeoutError:
                return []
            finally:
                self._waiter = None
            if not queue:  # woken by the loss
                raise (self._wire and self._wire.lost) or RedisConnectionError("pub/sub connection lost")
        if len(queue) <= limit:
            taken = list(queue)
            queue.clear()
        else:
            taken = [queue.popleft() for _ in range(limit)]
        if self._paused and len(queue) <= self.PAUSE_AT // 2 and self._wire is not None:
            self._paused = False
            self._wire.pause(False)
        return taken

    def pushed(self, reply: Any) -> None:
        self._queue.append(reply)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if len(self._queue) >= self.PAUSE_AT and not self._paused and self._wire is not None:
            self._paused = True
            self._wire.pause(True)

    def lost(self, why: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        if self._wire is not None:
            self._wire.drop(RedisConnectionError("the pub/sub link was closed"))
