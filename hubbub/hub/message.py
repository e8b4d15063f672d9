"""A stamped message and its wire encodings, each computed at most once per message.

The hub encodes the body once (``encode_body``); the backend that assigns the id
splices it in front (``with_id``), so a message is never decoded or re-encoded
on its way to subscribers, on this process or any other.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from sse_starlette.event import ServerSentEvent

from hubbub.hub.wire import http_chunk, websocket_text_frame
from hubbub.protocol import SERVER_FRAMES

# Fields the hub owns; a client's values for them are overwritten.
STAMPED_FIELDS = ("id", "channel", "sender", "timestamp")


# Made once: json.dumps with any option builds a new encoder on every call (~1.5 µs).
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_COMPACT_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Compact JSON; non-ASCII kept as is (SSE and WebSocket text are UTF-8).

    Lone surrogates (valid in Python strings, not in UTF-8) are escaped instead, so
    server-side data can never produce a frame that fails to encode for every subscriber.
    """
    text = _COMPACT.encode(value)
    if text.isascii():  # a flag of the string: no encoding to try
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _COMPACT_ASCII.encode(value)
    return text


_stamp_second: tuple[int, str] = (0, "")  # the last second stamped, and its text up to the dot


def timestamp_now() -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-26T10:30:00.123Z. Every message takes
    one: the date and time are formatted once a second (strftime costs ~4 µs)."""
    global _stamp_second
    now = time.time()
    second = int(now)
    cached, prefix = _stamp_second
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _stamp_second = (second, prefix)
    return f"{prefix}{int((now - second) * 1000):03d}Z"


def encode_body(channel: str, body: dict[str, Any], sender: str | None) -> str:
    """The message's JSON without its id: stamped fields overwrite the client's."""
    stamped = {k: v for k, v in body.items() if k not in STAMPED_FIELDS}
    stamped["channel"] = channel
    stamped["sender"] = sender
    stamped["timestamp"] = timestamp_now()
    return dumps(stamped)


# hubbub's own frames (protocol.json): a published event may not pass for one of them.
RESERVED_TYPES = SERVER_FRAMES
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def check_event_type(kind: str) -> str:
    """An event's ``type``: 1-64 of A-Z a-z 0-9 _ . : - and none of hubbub's own; else ValueError."""
    if not isinstance(kind, str) or not _EVENT_TYPE.fullmatch(kind):
        raise ValueError(f"'type' must be 1-64 of A-Z a-z 0-9 _ . : -, got {kind!r}"[:200])
    if kind in RESERVED_TYPES:
        raise ValueError(f"'type' may not be {kind!r}: that is one of hubbub's own frames")
    return kind


def presence_frame(kind: str, channel: str, user: str) -> str:
    """A live-only ``join`` or ``leave`` frame."""
    return dumps({"type": kind, "channel": channel, "sender": user})


def message_age_s(json_text: str) -> float | None:
    """Seconds since the message's timestamp (its last field), without decoding the JSON.

    Cheap on purpose (once per message per process): the time of day is enough, the day
    is not parsed, and a clock a little ahead of this one's counts as 0."""
    start = json_text.rfind('"timestamp":"') + 13
    stamp = json_text[start:start + 24]  # 2026-11-26T10:30:00.123Z
    if start < 13 or len(stamp) != 24 or stamp[10] != "T":
        return None
    try:
        hours, minutes = int(stamp[11:13]), int(stamp[14:16])
        seconds, ms = int(stamp[17:19]), int(stamp[20:23])
    except ValueError:
        return None
    of_day = hours * 3600 + minutes * 60 + seconds + ms / 1000
    age = time.time() % 86400 - of_day
    if age < -43200:  # across midnight
        age += 86400
    return max(age, 0.0)


def format_id(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


def with_id(message_id: str, body_json: str) -> str:
    """Splices ``"id"`` in as the first field of an encoded body (``{...}``)."""
    rest = body_json[1:]
    return f'{{"id":"{message_id}"{"," if rest != "}" else ""}{rest}'


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a subscriber got to: the history epoch and the sequence number in it."""

    epoch: str
    seq: int

    @classmethod
    def parse(cls, raw: str | None) -> Cursor | None:
        """None for no cursor; a malformed one parses to a cursor no history matches."""
        if raw is None or raw == "":
            return None
        epoch, _, seq = raw.rpartition("-")
        if not epoch or not (seq.isascii() and seq.isdigit()) or len(seq) > 19:
            return cls(epoch="?", seq=0)
        return cls(epoch=epoch, seq=int(seq))

    def __str__(self) -> str:
        return format_id(self.epoch, self.seq)


class Message:
    """One message as delivered. ``seq`` is None for live-only frames (join, leave)."""

    __slots__ = ("channel", "json", "seq", "epoch", "origin", "_sse", "_ws_frame", "_sse_chunk")

    def __init__(
        self, channel: str, json_text: str, seq: int | None = None, epoch: str = "",
        origin: str | None = None,
    ) -> None:
        self.channel = channel
        self.json = json_text
        self.seq = seq
        self.epoch = epoch
        self.origin = origin  # the publishing connection, skipped on delivery; None: nobody
        self._sse: bytes | None = None
        self._ws_frame: bytes | None = None
        self._sse_chunk: bytes | None = None

    @property
    def id(self) -> str | None:
        return None if self.seq is None else format_id(self.epoch, self.seq)

    @property
    def sse(self) -> bytes:
        """The SSE frame: an ``id:`` line (messages only) and one ``data:`` line."""
        if self._sse is None:
            self._sse = ServerSentEvent(self.json, id=self.id, sep="\n").encode()
        return self._sse

    @property
    def ws_frame(self) -> bytes:
        """The complete WebSocket text frame (no extension negotiated)."""
        if self._ws_frame is None:
            self._ws_frame = websocket_text_frame(self.json.encode())
        return self._ws_frame

    @property
    def sse_chunk(self) -> bytes:
        """The SSE frame as one chunk of a chunked HTTP/1.1 body."""
        if self._sse_chunk is None:
            self._sse_chunk = http_chunk(self.sse)
        return self._sse_chunk

    def __repr__(self) -> str:
        return f"Message({self.channel!r}, id={self.id!r}, {self.json[:60]!r})"


class Frames(Message):
    """Several live frames (join, leave) of one channel as one item: its encodings are theirs
    back to back, the same bytes a client gets when each is sent on its own."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Message]) -> None:
        super().__init__(parts[0].channel, "")
        self.parts = parts

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = b"".join([part.sse for part in self.parts])
        return self._sse

    @property
    def ws_frame(self) -> bytes:
        if self._ws_frame is None:
            self._ws_frame = b"".join([part.ws_frame for part in self.parts])
        return self._ws_frame

    def __repr__(self) -> str:
        return f"Frames({self.channel!r}, {len(self.parts)} parts)"


@dataclass(frozen=True, slots=True)
class History:
    """Retained messages after a cursor, oldest first; ``recovered`` is False when some were lost."""

    messages: list[Message]
    recovered: bool
