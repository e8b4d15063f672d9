"""The socket writer's invariants: a turn's frames leave in one write, in order, within the
high-water mark; nothing after close; no empty chunk; frames byte for byte as wsproto's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hubbub.hub.message import Message
from hubbub.hub.wire import http_chunk, websocket_frame
from hubbub.transports.socket_writer import DirectWriter, WriteBatcher

HIGH_WATER = 100


class RecordingTransport:
    """The slice of an asyncio transport DirectWriter uses; records every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0  # what the kernel has not taken yet
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, HIGH_WATER)


class Writer:
    def __init__(self) -> None:
        self.transport = RecordingTransport()
        self.drains = 0

    async def drain(self) -> None:
        self.drains += 1


def message(text: str) -> Message:
    return Message("room:lobby", text)


def encode(m: Message) -> bytes:
    return m.json.encode()


def direct(batcher: WriteBatcher) -> tuple[DirectWriter, RecordingTransport]:
    writer: Any = Writer()
    return DirectWriter(writer, encode, batcher), writer.transport


async def next_turn() -> None:
    await asyncio.sleep(0)


async def test_direct_writer_one_turn_one_write_in_order() -> None:
    batcher = WriteBatcher()
    writer, transport = direct(batcher)
    assert all(writer.try_write(message(t)) for t in ("a", "b", "c"))
    assert transport.writes == []  # nothing before the end of the turn
    await next_turn()
    assert transport.writes == [b"abc"]
    assert writer.try_write(message("d"))
    await next_turn()
    assert transport.writes == [b"abc", b"d"]


async def test_direct_writer_batches_per_socket() -> None:
    batcher = WriteBatcher()
    (first, t1), (second, t2) = direct(batcher), direct(batcher)
    for text in ("x", "y"):
        assert first.try_write(message(text))
        assert second.try_write(message(text))
    await next_turn()
    assert t1.writes == [b"xy"] and t2.writes == [b"xy"]


async def test_direct_writer_refuses_past_high_water_counting_the_turn() -> None:
    batcher = WriteBatcher()
    writer, transport = direct(batcher)
    assert writer.try_write(message("x" * 60))
    assert writer.try_write(message("y" * 60))  # 60 taken: still under 100
    assert not writer.try_write(message("z"))  # 120 taken this turn: the caller queues it
    await next_turn()
    assert transport.writes == [b"x" * 60 + b"y" * 60]
    transport.buffered = HIGH_WATER + 1  # the peer has not read it
    assert not writer.try_write(message("w"))


async def test_direct_writer_backlog_write_goes_after_the_turn() -> None:
    batcher = WriteBatcher()
    writer, transport = direct(batcher)
    assert writer.try_write(message("a"))
    await writer.write([message("b"), message("c")])  # the flush task's path
    await next_turn()
    assert transport.writes == [b"a", b"bc"]


async def test_direct_writer_closed_transport_takes_and_drops() -> None:
    batcher = WriteBatcher()
    writer, transport = direct(batcher)
    transport.closing = True
    assert writer.try_write(message("a"))  # taken: the handler is ending anyway
    await next_turn()
    assert transport.writes == []


async def test_direct_writer_after_close_writes_nothing_more() -> None:
    # After an SSE response ends, the server may reuse the keep-alive connection for the
    # next request: a late write would land in the middle of that response.
    batcher = WriteBatcher()
    writer, transport = direct(batcher)
    assert writer.try_write(message("a"))
    writer.close()  # what the turn took still goes out, first
    assert writer.try_write(message("b"))  # taken and dropped
    writer.write_bytes(b"c")
    writer.write_if_room(b"d")
    await writer.write([message("e")])
    await next_turn()
    assert transport.writes == [b"a"]


async def test_direct_writer_empty_data_never_written() -> None:
    batcher = WriteBatcher()
    writer, transport = direct(batcher)
    writer.write_bytes(b"")
    writer.write_if_room(b"")
    await writer.write([])
    assert transport.writes == []


def test_http_chunk_empty_refused_it_would_end_the_body() -> None:
    with pytest.raises(ValueError):
        http_chunk(b"")
    assert http_chunk(b"hi") == b"2\r\nhi\r\n"


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("binary", [False, True])
def test_websocket_frame_same_bytes_as_wsproto(length: int, binary: bool) -> None:
    # The fan-out writes its own frames; they must be exactly what wsproto would send.
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage, TextMessage

    payload = b"x" * length
    server = Connection(ConnectionType.SERVER)
    event = BytesMessage(data=payload) if binary else TextMessage(data=payload.decode())
    assert websocket_frame(payload, binary=binary) == server.send(event)
