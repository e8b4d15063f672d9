"""Lightweight subscribers on raw asyncio sockets: a WebSocket and an SSE reader, no JSON decoding.

Chat messages carry ``m#<seq>:<send monotonic ns>`` as their text. A reader counts the
messages in each read, keeps the highest ``seq`` (that is all the watchdog needs) and,
only when asked (``Recorder.detail``), the latency of every message. The per-message
work is a ``bytes.find`` or ``bytes.count``; everything else is per read.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time

MARK = b"m#"


class Recorder:
    """What all subscribers of one phase share: latency samples (ms) when ``detail`` is on."""

    def __init__(self) -> None:
        self.detail = False
        self.latencies_ms: list[float] = []


class Subscriber(asyncio.Protocol):
    """Common state: the HTTP response head, the welcome, counts, close."""

    kind = ""

    def __init__(self, recorder: Recorder, path: str, host: str, stall: bool = False) -> None:
        self.recorder = recorder
        self.path = path
        self.host = host
        self.stall = stall
        self.count = 0  # chat messages received
        self.last_seq = 0  # highest seq seen
        self.closed = False
        self.close_code: int | None = None
        self.status = 0
        self.transport: asyncio.Transport | None = None
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._head = b""
        self._in_body = False

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError(f"closed before welcome ({self.status})"))

    def data_received(self, data: bytes) -> None:
        if self._in_body:
            self.body_received(data)
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > 65536:
                self._fail("response head too large")
            return
        head, rest = self._head[:end], self._head[end + 4:]
        self._head = b""
        self.status = int(head.split(b" ", 2)[1])
        if not self.head_ok(head):
            self._fail(f"HTTP {self.status}: {rest[:200]!r}")
            return
        self._in_body = True
        if rest:
            self.body_received(rest)

    # -- helpers -----------------------------------------------------------

    def _fail(self, why: str) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError(why))
        self.close()

    def _welcome(self) -> None:
        if not self.welcomed.done():
            self.welcomed.set_result(None)
            if self.stall and self.transport is not None:
                self.transport.pause_reading()  # stops reading for good: the kernel buffers fill

    def _chat(self, data: bytes, positions: list[int] | None, last: int, n: int) -> None:
        """``n`` chat messages in ``data``; ``last`` is where the last one's MARK sits."""
        self.count += n
        end = data.index(b":", last)
        seq = int(data[last + 2:end])
        if seq > self.last_seq:
            self.last_seq = seq
        if positions is not None:
            now = time.monotonic_ns()
            samples = self.recorder.latencies_ms
            for pos in positions:
                start = data.index(b":", pos) + 1
                stop = data.index(b'"', start)
                samples.append((now - int(data[start:stop])) / 1e6)

    @property
    def port(self) -> int:
        """The server's port (from ``host``)."""
        return int(self.host.rsplit(":", 1)[1])

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self.closed = True

    def request(self) -> bytes:
        raise NotImplementedError

    def head_ok(self, head: bytes) -> bool:
        raise NotImplementedError

    def body_received(self, data: bytes) -> None:
        raise NotImplementedError


class WSSubscriber(Subscriber):
    """A WebSocket client: hand-made upgrade, no extensions offered, a tiny frame parser."""

    kind = "ws"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._buf = b""

    def request(self) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode()

    def head_ok(self, head: bytes) -> bool:
        return self.status == 101

    def body_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        n = len(data)
        i = 0
        chats = 0
        last = -1
        positions: list[int] | None = [] if self.recorder.detail else None
        while n - i >= 2:
            length = data[i + 1] & 0x7F
            head = 2
            if length == 126:
                if n - i < 4:
                    break
                length = (data[i + 2] << 8) | data[i + 3]
                head = 4
            elif length == 127:
                if n - i < 10:
                    break
                length = struct.unpack_from("!Q", data, i + 2)[0]
                head = 10
            end = i + head + length
            if end > n:
                break
            opcode = data[i] & 0x0F
            if opcode <= 2:  # text, binary, continuation
                pos = data.find(MARK, i + head, end)
                if pos >= 0:
                    chats += 1
                    last = pos
                    if positions is not None:
                        positions.append(pos)
                elif not self.welcomed.done() and b'"welcome"' in data[i + head:end]:
                    self._welcome()
            elif opcode == 8:
                if length >= 2:
                    self.close_code = (data[i + head] << 8) | data[i + head + 1]
                self._fail(f"closed {self.close_code}")
                return
            elif opcode == 9:  # ping: answer with a masked pong
                self._send(0xA, data[i + head:end])
            i = end
        if chats:
            self._chat(data, positions, last, chats)
        if i < n:
            self._buf = data[i:]

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)


class SSESubscriber(Subscriber):
    """An EventSource stand-in that counts events by MARK, straight off the chunked body.

    No de-chunking: each server write is one chunk of whole events, so chunk-size lines
    only ever sit between a blank line and the next event, and never contain MARK or a
    blank line. Only the text after the last blank line is carried to the next read.
    """

    kind = "sse"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._carry = b""  # an event cut by a read

    def request(self) -> bytes:
        return (f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
                "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode()

    def head_ok(self, head: bytes) -> bool:
        return self.status == 200

    def body_received(self, data: bytes) -> None:
        if self._carry:
            data = self._carry + data
            self._carry = b""
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self._carry = data
            return
        if cut + 2 < len(data):
            self._carry = data[cut + 2:]
            data = data[:cut + 2]
        if not self.welcomed.done() and b'"welcome"' in data:
            self._welcome()
        chats = data.count(MARK)
        if chats:
            positions = None
            if self.recorder.detail:
                positions = []
                pos = data.find(MARK)
                while pos >= 0:
                    positions.append(pos)
                    pos = data.find(MARK, pos + 2)
            self._chat(data, positions, data.rfind(MARK), chats)


async def open_subscriber(kind: str, recorder: Recorder, port: int, path: str,
                          stall: bool = False, timeout_s: float = 10.0) -> Subscriber:
    """Connects, subscribes and waits for the welcome. ``stall``: a tiny receive buffer, never read."""
    loop = asyncio.get_running_loop()
    cls = WSSubscriber if kind == "ws" else SSESubscriber
    host = f"127.0.0.1:{port}"
    sub = cls(recorder, path, host, stall)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if stall:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout_s):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.create_connection(lambda: sub, sock=sock)
            await sub.welcomed
    except BaseException:
        sub.close()
        sock.close()
        raise
    return sub
