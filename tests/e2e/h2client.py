"""A raw HTTP/2 client on the ``h2`` library, for what httpx will not do: withhold
flow-control credit from one stream, or open a WebSocket over HTTP/2 (RFC 8441)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings

TIMEOUT_S = 10.0


@dataclass
class Stream:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: bool = False
    credit: bool = True  # False: never acknowledge its data, so the server gets no credit
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class H2Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 connection: h2.connection.H2Connection) -> None:
        self.reader, self.writer, self.conn = reader, writer, connection
        self.streams: dict[int, Stream] = {}
        self.terminated = False
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, port: int, *, window: int = 65535, tls: ssl.SSLContext | None = None) -> H2Client:
        """Prior knowledge (h2c) on plain TCP, or ALPN "h2" with ``tls``."""
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
        async with asyncio.timeout(TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        return cls(reader, writer, conn)

    def request(self, method: str, path: str, headers: list[tuple[str, str]] | None = None, *,
                body: bytes | None = None, credit: bool = True, extra: list[tuple[str, str]] | None = None,
                end: bool = True) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.streams[stream_id] = Stream(credit=credit)
        pseudo = [(":method", method), *(extra or []), (":scheme", "http"), (":path", path),
                  (":authority", "127.0.0.1")]
        self.conn.send_headers(stream_id, pseudo + (headers or []), end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=end)
        self.writer.write(self.conn.data_to_send())
        return stream_id

    def send(self, stream_id: int, data: bytes) -> None:
        self.conn.send_data(stream_id, data)
        self.writer.write(self.conn.data_to_send())

    async def until(self, stream_id: int, check: object, timeout: float = TIMEOUT_S) -> Stream:
        """Waits until ``check(stream)`` holds (data arrived, it ended or it was reset)."""
        stream = self.streams[stream_id]
        async with asyncio.timeout(timeout):
            while not check(stream):  # type: ignore[operator]
                stream.changed.clear()
                await stream.changed.wait()
        return stream

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for event in self.conn.receive_data(data):
                self._on(event)
            self.writer.write(self.conn.data_to_send())
        self.terminated = True
        for stream in self.streams.values():
            stream.changed.set()

    def _on(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream.headers = dict(event.headers)  # type: ignore[arg-type]
        elif isinstance(event, h2.events.DataReceived) and stream is not None:
            stream.data += event.data
            if stream.credit:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = True
        if stream is not None:
            stream.changed.set()

    async def close(self) -> None:
        self._reading.cancel()
        self.writer.close()
        await asyncio.gather(self._reading, return_exceptions=True)
        with contextlib.suppress(OSError):
            async with asyncio.timeout(TIMEOUT_S):
                await self.writer.wait_closed()
