"""Lightweight subscribers on raw non-blocking sockets: a WebSocket and an SSE reader, no JSON decoding.

Chat messages carry ``m#<seq>:<send ns>`` as their text, the send time on CLOCK_REALTIME
(``time.time_ns()``, see ``bench/publisher.py``). A reader counts the messages in each read,
keeps the highest ``seq`` (that is all the watchdog needs) and, only when asked
(``Recorder.detail``), two latencies for every message:

- ``arrival``: the kernel's receive timestamp of the read that completed it, minus the stamp.
  Every subscriber socket has ``SO_TIMESTAMPNS`` set and is read with ``recvmsg``; for TCP,
  Linux reports (``SCM_TIMESTAMPNS``, CLOCK_REALTIME) the timestamp of the last segment that
  read consumed, so it is never earlier than any message in it actually arrived.
- ``read``: ``time.time_ns()`` when the generator parsed the read, minus the stamp. One
  process reads all the sockets in turn, so this includes its own serial reading time.

Both are differences on CLOCK_REALTIME, so no clock conversion is needed.

No asyncio transport: each socket is read from a ``loop.add_reader`` callback (uvloop and
plain asyncio both support it on a raw fd), one ``recvmsg`` per readiness. Writes (the
request, pongs) are tiny: sent directly, anything the socket does not take waits in a small
buffer for an ``add_writer`` callback. The per-message work is a ``bytes.find`` or
``bytes.count``; everything else, the timestamp included, is per read.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, ResponseReceived, StreamEnded, StreamReset
from h2.exceptions import ProtocolError

MARK = b"m#"
# Linux: SO_TIMESTAMPNS (asm-generic SO_TIMESTAMPNS_OLD) = 35; the cmsg type SCM_TIMESTAMPNS is
# the same number. Python 3.11 does not export the constant. The cmsg data is a native struct
# timespec (two longs).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")
ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
# Per read, recvmsg allocates a bytes of READ_SIZE and shrinks it. At 256 KiB (asyncio's
# transports) that is glibc's mmap range: mmap + mremap + munmap and a page fault on every
# read (~15 us more per read here); under the 128 KiB threshold it comes from the heap. More
# pending data than 64 KiB just takes another callback.
READ_SIZE = 64 * 1024
_SOL_SOCKET = socket.SOL_SOCKET


class Recorder:
    """What all subscribers of one phase share: latency samples (ms) when ``detail`` is on.

    ``latencies_ms``: read latency (generator parsed it − stamp); ``arrival_ms``: arrival
    latency (kernel receive timestamp − stamp), one of each per message, in the same order.
    ``unstamped``: messages whose read had no kernel timestamp (their arrival is the read time).
    """

    def __init__(self) -> None:
        self.detail = False
        self.latencies_ms: list[float] = []
        self.arrival_ms: list[float] = []
        self.unstamped = 0


class Subscriber:
    """Common state: the socket, the HTTP response head, the welcome, counts, close."""

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
        self.sock: socket.socket | None = None
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._fd = -1
        self._reading = False
        self._out = b""  # bytes the socket has not taken yet (an add_writer is then pending)
        self._anc: list[tuple[int, int, bytes]] = []  # the last read's ancillary data
        self._head = b""
        self._in_body = False

    # -- the socket ----------------------------------------------------------

    def start(self, sock: socket.socket) -> None:
        """Takes a connected non-blocking socket: starts reading and sends the request."""
        self.sock = sock
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._readable)
        self._reading = True
        self._write(self.request())

    def _readable(self) -> None:
        try:
            data, self._anc, _, _ = self.sock.recvmsg(READ_SIZE, ANC_SIZE)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if data:
            self.data_received(data)
        else:
            self._lost(None)  # EOF

    def _write(self, data: bytes) -> None:
        if self.sock is None or self.closed:
            return
        if self._out:  # already waiting for the socket: keep the order
            self._out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):
            self._out = data[sent:]
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self._out)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        self._out = self._out[sent:]
        if not self._out:
            self._loop.remove_writer(self._fd)

    def _release(self) -> None:
        """Unregisters the fd from the loop, then closes the socket (no flush: like ``abort``)."""
        sock, self.sock = self.sock, None
        self.closed = True
        if sock is None:
            return
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)
        if self._out:
            self._out = b""
            self._loop.remove_writer(self._fd)
        sock.close()

    def _lost(self, exc: Exception | None) -> None:
        """The connection ended (EOF, error) or we closed it: as ``connection_lost``."""
        self._release()
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
            if self.stall and self._reading:
                # Stops reading for good: the kernel buffers fill.
                self._reading = False
                self._loop.remove_reader(self._fd)

    def _chat(self, data: bytes, positions: list[int] | None, last: int, n: int) -> None:
        """``n`` chat messages in ``data``; ``last`` is where the last one's MARK sits."""
        self.count += n
        end = data.index(b":", last)
        seq = int(data[last + 2:end])
        if seq > self.last_seq:
            self.last_seq = seq
        if positions is not None:
            now = time.time_ns()
            arrival = now
            for level, kind, cdata in self._anc:
                if level == _SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(cdata)
                    arrival = sec * 1_000_000_000 + nsec
            recorder = self.recorder
            if arrival == now:
                recorder.unstamped += len(positions)
            reads = recorder.latencies_ms
            arrivals = recorder.arrival_ms
            for pos in positions:
                start = data.index(b":", pos) + 1
                stamp = int(data[start:data.index(b'"', start)])
                reads.append((now - stamp) / 1e6)
                arrivals.append((arrival - stamp) / 1e6)

    @property
    def port(self) -> int:
        """The server's port (from ``host``)."""
        return int(self.host.rsplit(":", 1)[1])

    def close(self) -> None:
        if self.sock is not None:
            self._lost(None)
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
        if self.sock is None:
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
        self._write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def send_text(self, payload: bytes) -> None:
        """One masked text frame (up to 64 KiB), e.g. a chat frame: the mask is applied as one
        big-integer XOR, not per byte, since the rooms scenario sends thousands a second."""
        if self.sock is None:
            return
        n = len(payload)
        head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
        mask = os.urandom(4)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        self._write(head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big"))


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


class H2SSESubscriber(SSESubscriber):
    """The SSE reader over HTTP/2: h2c with prior knowledge, one connection per subscriber
    (as each browser holds its own). The h2 library parses the frames; each DATA frame's
    payload is counted as SSESubscriber counts a chunked body, and its flow-control credit
    is given back as soon as it is read. Parsing frames costs the generator more per read
    than HTTP/1.1's raw chunks (see generator CPU in the report)."""

    kind = "h2sse"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))

    def request(self) -> bytes:
        self._h2.initiate_connection()
        self._h2.send_headers(1, [(b":method", b"GET"), (b":path", self.path.encode()),
                                  (b":scheme", b"http"), (b":authority", self.host.encode()),
                                  (b"accept", b"text/event-stream")], end_stream=True)
        return self._h2.data_to_send()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except ProtocolError as exc:
            self._fail(f"HTTP/2: {exc}")
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                self.status = int(dict(event.headers).get(b":status", b"0"))
                if self.status != 200:
                    self._fail(f"HTTP {self.status}")
                    return
            elif isinstance(event, DataReceived):
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.data:
                    self.body_received(event.data)
            elif isinstance(event, (StreamEnded, StreamReset, ConnectionTerminated)):
                self._lost(None)
                return
        out = self._h2.data_to_send()
        if out:
            self._write(out)


SUBSCRIBERS: dict[str, type[Subscriber]] = {"ws": WSSubscriber, "sse": SSESubscriber,
                                            "h2sse": H2SSESubscriber}


async def open_subscriber(kind: str, recorder: Recorder, port: int, path: str,
                          stall: bool = False, timeout_s: float = 10.0) -> Subscriber:
    """Connects, subscribes and waits for the welcome. ``stall``: a tiny receive buffer, never read."""
    loop = asyncio.get_running_loop()
    cls = SUBSCRIBERS[kind]
    host = f"127.0.0.1:{port}"
    sub = cls(recorder, path, host, stall)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # a kernel receive time on every read
    if stall:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout_s):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            sub.start(sock)
            await sub.welcomed
    except BaseException:
        sub.close()
        sock.close()
        raise
    return sub
