"""PongFilter: only a lone empty pong at a frame boundary is kept back; every other byte
reaches the reader, in order, however the stream is cut into chunks."""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubbub.transports.pong_filter import PongFilter

PONG = 0xA


class Peer:
    last_received = 0.0


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A client frame: masked (RFC 6455 §5.3; a zero ``mask`` leaves the payload as it is),
    with the shortest length encoding."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def run_through(chunks: list[bytes]) -> tuple[bytes, Peer]:
    """What the reader got when ``chunks`` arrived one by one through a filter."""
    loop = asyncio.new_event_loop()
    try:
        reader = asyncio.StreamReader(loop=loop)
        peer = Peer()
        assert PongFilter.install(reader, b"", peer)
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        return loop.run_until_complete(reader.read()), peer
    finally:
        loop.close()


LENGTHS = st.one_of(st.integers(0, 130), st.sampled_from([0, 125, 126, 127, 65535, 65536]))
FRAMES = st.lists(st.tuples(st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, PONG]), LENGTHS), max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=FRAMES, data=st.data())
def test_only_lone_empty_pongs_at_a_boundary_are_kept_back(frames: list[tuple[int, int]],
                                                           data: st.DataObject) -> None:
    wire = [frame(opcode, os.urandom(n) if n < 200 else bytes(n)) for opcode, n in frames]
    stream = b"".join(wire)
    starts = {sum(map(len, wire[:i])) for i in range(len(wire))}
    # Cut as TCP might deliver it: at frame boundaries (a frame alone, or several together)
    # and anywhere else.
    cuts = {at for at in starts if data.draw(st.booleans())}
    cuts |= set(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    edges = sorted(cuts | {0, len(stream)})
    chunks = [(a, stream[a:b]) for a, b in zip(edges, edges[1:], strict=False) if b > a]

    got, peer = run_through([chunk for _, chunk in chunks])

    lone_pongs = [at for at, chunk in chunks
                  if at in starts and chunk[:2] == b"\x8a\x80" and len(chunk) == 6]
    assert got == b"".join(chunk for at, chunk in chunks if at not in lone_pongs)
    assert (peer.last_received > 0) == bool(lone_pongs)


def test_a_lone_pong_is_noted_as_the_peer_being_alive() -> None:
    text = frame(0x1, b'{"type":"ping"}')
    got, peer = run_through([text, frame(PONG, b"")])
    assert got == text
    assert peer.last_received > 0


def test_lone_pongs_after_frames_of_every_length_encoding() -> None:
    frames = [frame(0x1, b"x" * 125), frame(0x1, b"x" * 300), frame(0x2, bytes(70_000))]  # 7, 16, 64 bits
    pong = frame(PONG, b"")
    chunks = [frames[0], pong, frames[1][:50], frames[1][50:], pong, frames[2][:9], frames[2][9:], pong]
    got, peer = run_through(chunks)
    assert got == b"".join(frames)
    assert peer.last_received > 0


def test_pong_shaped_bytes_that_are_not_a_frame_of_their_own_go_on() -> None:
    lookalike = bytes([0x80 | PONG, 0x80, 1, 2, 3, 4])
    clear = b"\0\0\0\0"  # the payload's bytes on the wire as they are
    binary = frame(0x2, lookalike, mask=clear)
    text = frame(0x1, b"ab" + lookalike + b"x" * 300, mask=clear)  # a 126-length header: 8 bytes

    for chunks in ([binary[:6], binary[6:]],  # the payload alone, right after its header
                   [text[:10], text[10:16], text[16:]],  # mid-payload, in a chunk of its own
                   [text[:5], text[5:], binary]):  # the header itself split
        got, peer = run_through(chunks)
        assert got == b"".join(chunks)
        assert peer.last_received == 0.0
    assert text[10:16] == binary[6:] == lookalike


def test_not_put_in_while_received_bytes_are_unread() -> None:
    loop = asyncio.new_event_loop()
    try:
        reader = asyncio.StreamReader(loop=loop)
        assert not PongFilter.install(reader, b"\x81", Peer())  # the server holds some
        assert not PongFilter.install(reader, None, Peer())  # the server's buffer unknown
        reader.feed_data(b"\x81\x85")
        assert not PongFilter.install(reader, b"", Peer())  # asyncio holds some
        assert not PongFilter.install(object(), b"", Peer())  # not asyncio's reader
        assert "feed_data" not in vars(reader)
    finally:
        loop.close()
