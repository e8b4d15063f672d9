"""The publisher: chat POSTs over a few keep-alive HTTP/1.1 connections on raw asyncio streams.

Every message's text is ``m#<seq>:<ns at send>``, the send time on CLOCK_REALTIME
(``time.time_ns()``): the subscribers compare it with the kernel's receive timestamps
(``SO_TIMESTAMPNS``, also CLOCK_REALTIME) and with their own read time, so every latency is a
difference on one clock and nothing is converted. ``sent_ns[seq]`` keeps the send time (or
the slot the message was due at) on the monotonic clock, so the watchdog can age the oldest
undelivered message. ``seq`` grows for the whole life of a server, in the order the requests
are written.

Given several ports (servers sharing one hub through Redis), the connections alternate
between them, so the POSTs are spread evenly (see ``Publisher``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence


class HttpConnection:
    """One keep-alive connection; reopened when the server closes it (Hypercorn: 1,000 requests)."""

    def __init__(self, port: int, headers: str) -> None:
        self.port = port
        self.headers = headers
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{self.headers}"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self._writer.write(head + body)
        try:
            raw = await self._reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, keep = 0, True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and "close" in value.lower():
                keep = False
        data = await self._reader.readexactly(length) if length else b""
        if not keep:
            self.close()
        return status, data

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None


class Publisher:
    """Posts chat messages to one room: paced, or as fast as the server answers.

    ``port``: one server, or several serving the same hub: connection ``i`` then goes to
    ``ports[i % len(ports)]``. Paced, an idle connection takes the next slot and queues
    again behind the others (``asyncio.Queue`` serves waiters in order), so while the
    servers keep up the POSTs alternate between them; a server slow to answer gets fewer.
    """

    def __init__(self, port: int | Sequence[int], room: str, token: str | None, connections: int = 64,
                 paced_connections: int = 16, post_timeout_s: float = 5.0) -> None:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.headers = auth + "Content-Type: application/json\r\n"
        self.ports = [port] if isinstance(port, int) else list(port)
        self.port = self.ports[0]
        self.path = f"/api/rooms/{room}/messages"
        # Flat out: this many requests in flight. Fewer starve the server: in a trial with 8,
        # hubbub saw a third of the deliveries/s it reached with 32-128 (batches of one).
        self.connections = connections
        self.paced_connections = paced_connections  # paced: enough that none waits for a free one
        self.post_timeout_s = post_timeout_s
        self.seq = 0
        self.sent_ns: list[int] = [0]
        self.errors = 0
        self.answered = 0  # POSTs answered 202
        self.answered_by_port: dict[int, int] = {}
        self.stopping = False  # set to end a paced run early: in-flight POSTs still finish
        self.lateness_s = 0.0  # worst delay between a paced message's slot and its send
        self._pending: deque[int] = deque()  # slots of paced messages not yet sent

    def _next(self, due_ns: int | None = None) -> bytes:
        """The next message: its text carries the send time (CLOCK_REALTIME ns, for latency);
        ``sent_ns`` when it was due (monotonic ns, for the watchdog)."""
        self.seq += 1
        self.sent_ns.append(due_ns or time.monotonic_ns())
        return b'{"text":"m#%d:%d"}' % (self.seq, time.time_ns())

    async def _post(self, conn: HttpConnection, body: bytes, timeout_s: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout_s or self.post_timeout_s):
                status, _ = await conn.request("POST", self.path, body)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            conn.close()
            self.errors += 1
            return False
        if status != 202:
            self.errors += 1
            return False
        self.answered += 1
        self.answered_by_port[conn.port] = self.answered_by_port.get(conn.port, 0) + 1
        return True

    async def post_raw(self, body: bytes, timeout_s: float | None = None) -> bool:
        """One POST of an arbitrary JSON body (e.g. filler), not counted in ``seq``."""
        conn = HttpConnection(self.port, self.headers)
        try:
            return await self._post(conn, body, timeout_s)
        finally:
            conn.close()

    def oldest_unsent_slot_ns(self) -> int | None:
        """The slot of the oldest paced message not yet handed to a connection."""
        return self._pending[0] if self._pending else None

    async def paced(self, rate: float, duration_s: float) -> int:
        """Posts ``rate`` messages/s for ``duration_s``; returns how many went out.

        ``sent_ns`` gets each message's slot (when it was due), so a server that is slow to
        take POSTs shows up as undelivered messages aging, like one slow to deliver them.
        """
        total = max(1, round(rate * duration_s))
        slots: asyncio.Queue[int] = asyncio.Queue()
        self._pending.clear()
        self.stopping = False
        sent = 0

        async def worker(port: int) -> None:
            nonlocal sent
            conn = HttpConnection(port, self.headers)
            try:
                while True:
                    slot = await slots.get()
                    self._pending.popleft()
                    self.lateness_s = max(self.lateness_s, (time.monotonic_ns() - slot) / 1e9)
                    sent += 1
                    ok = await self._post(conn, self._next(slot))
                    slots.task_done()
                    if not ok:
                        return
            finally:
                conn.close()

        workers = [asyncio.create_task(worker(self.ports[i % len(self.ports)]))
                   for i in range(self.paced_connections)]
        try:
            start = time.monotonic_ns()
            for i in range(total):
                slot = start + round(i * 1e9 / rate)
                delay = (slot - time.monotonic_ns()) / 1e9
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                if self.stopping:
                    break
                self._pending.append(slot)
                slots.put_nowait(slot)
            while self.stopping and not slots.empty():  # drop what is not sent yet
                slots.get_nowait()
                self._pending.popleft()
                slots.task_done()
            # Let the last POSTs finish: closing their connection could cancel a fan-out
            # (the baseline's handler, cancelled on disconnect, would stop mid-loop).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.post_timeout_s):
                    await slots.join()
        finally:
            self._pending.clear()
            await _cancel(workers)
        return sent

    async def flat_out(self, duration_s: float, max_messages: int) -> int:
        """Posts back to back on every connection until the time or the count runs out."""
        deadline = time.monotonic() + duration_s
        sent = 0

        async def worker(port: int) -> None:
            nonlocal sent
            conn = HttpConnection(port, self.headers)
            try:
                while time.monotonic() < deadline and sent < max_messages:
                    sent += 1
                    if not await self._post(conn, self._next()):
                        return
            finally:
                conn.close()

        workers = [asyncio.create_task(worker(self.ports[i % len(self.ports)]))
                   for i in range(self.connections)]
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(duration_s + self.post_timeout_s):
                    await asyncio.gather(*workers)
        finally:
            await _cancel(workers)
        return sent


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
