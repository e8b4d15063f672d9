"""Messages: id splicing, the SSE frame, cursors and timestamps."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubbub.hub.message import (
    STAMPED_FIELDS,
    Cursor,
    Frames,
    Message,
    encode_body,
    presence_frame,
    timestamp_now,
    with_id,
)
from hubbub.hub.wire import http_chunk

RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

json_scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False,
                                                                                allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def sse_lines(frame: bytes) -> list[str]:
    """The frame's lines as an EventSource splits them: on CR LF, CR or LF only (WHATWG SSE)."""
    return re.split(r"\r\n|\r|\n", frame.decode("utf-8"))


def sse_fields(frame: bytes) -> list[tuple[str, str]]:
    fields = []
    for line in sse_lines(frame):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.append((name, value[1:] if value.startswith(" ") else value))
    return fields


# -- with_id ------------------------------------------------------------------


@settings(database=None)
@given(body=st.dictionaries(st.text(max_size=10), json_values, min_size=1, max_size=6))
def test_with_id_any_nonempty_body_valid_json_with_id_first(body: dict[str, object]) -> None:
    body.pop("id", None)
    if not body:
        body = {"k": 1}
    spliced = with_id("ab12-7", json.dumps(body, ensure_ascii=False, separators=(",", ":")))
    value = json.loads(spliced)
    assert list(value)[0] == "id"
    assert value == {"id": "ab12-7", **body}


def test_with_id_empty_object_valid_json() -> None:
    # Latent: unreachable through encode_body (which always adds fields), but the splice
    # itself must not produce {"id":"…",} for an empty object.
    assert json.loads(with_id("ab12-1", "{}")) == {"id": "ab12-1"}


@settings(database=None)
@given(body=st.dictionaries(st.sampled_from([*STAMPED_FIELDS, "text", "type", "x"]), json_values),
       sender=st.none() | st.text(max_size=10))
def test_encode_body_client_stamped_fields_overwritten(body: dict[str, object], sender: str | None) -> None:
    value = json.loads(with_id("e-9", encode_body("room:lobby", body, sender)))
    assert list(value)[0] == "id"
    assert value["id"] == "e-9"
    assert value["channel"] == "room:lobby"
    assert value["sender"] == sender
    assert RFC3339_MS.match(value["timestamp"])
    assert {k: v for k, v in value.items() if k not in STAMPED_FIELDS} == {
        k: v for k, v in body.items() if k not in STAMPED_FIELDS
    }


# -- SSE ----------------------------------------------------------------------


def test_message_sse_one_id_line_one_data_line_no_event() -> None:
    body = encode_body("room:lobby", {"type": "chat", "text": "hi"}, "alice")
    message = Message("room:lobby", with_id("ab12-3", body), 3, "ab12")
    frame = message.sse
    assert frame.endswith(b"\n\n")
    fields = sse_fields(frame)
    assert [name for name, _ in fields] == ["id", "data"]
    assert fields[0][1] == "ab12-3"
    assert json.loads(fields[1][1])["text"] == "hi"
    assert b"event:" not in frame


def test_message_sse_live_frame_has_no_id_line() -> None:
    frame = Message("room:lobby", '{"type":"join","channel":"room:lobby","sender":"a"}').sse
    assert [name for name, _ in sse_fields(frame)] == ["data"]


def test_message_sse_encoded_once_same_bytes() -> None:
    message = Message("room:lobby", '{"id":"e-1"}', 1, "e")
    assert message.sse is message.sse


@pytest.mark.parametrize("text", [
    "a\nb", "a\rb", "a\r\nb", "a\u2028b", "a\u2029b", "a\x85b", "a\x00b", "\n\n\r\r", "data: x\n\nid: 9",
])
def test_message_sse_line_breaks_in_text_stay_on_one_data_line(text: str) -> None:
    body = encode_body("room:lobby", {"type": "chat", "text": text}, "alice")
    frame = Message("room:lobby", with_id("ab12-5", body), 5, "ab12").sse
    lines = sse_lines(frame)
    assert lines[-2:] == ["", ""]  # the blank line that ends the event
    assert len(lines) == 4
    assert lines[0] == "id: ab12-5"
    assert lines[1].startswith("data: ")
    assert json.loads(lines[1].removeprefix("data: "))["text"] == text


@settings(database=None)
@given(text=st.text())
def test_message_sse_any_text_round_trips_through_one_data_line(text: str) -> None:
    body = encode_body("room:lobby", {"text": text}, None)
    fields = sse_fields(Message("room:lobby", with_id("e-1", body), 1, "e").sse)
    assert [name for name, _ in fields] == ["id", "data"]
    assert json.loads(fields[1][1])["text"] == text


# -- Cursor -------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, ""])
def test_cursor_parse_absent_none(raw: str | None) -> None:
    assert Cursor.parse(raw) is None


def test_cursor_parse_valid_round_trips() -> None:
    cursor = Cursor.parse("ab12-42")
    assert cursor == Cursor("ab12", 42)
    assert str(cursor) == "ab12-42"


def test_cursor_parse_epoch_with_dashes_splits_on_last() -> None:
    assert Cursor.parse("a-b-c-7") == Cursor("a-b-c", 7)


@pytest.mark.parametrize("raw", [
    "garbage", "-", "--", "-5", "ab-", "ab-x", "ab--1", "ab-1.5", "ab-+1", "ab- 1", "ab-1e3",
    "ab-" + "9" * 20, "ab-" + "1" * 100000, "\x00-1", "ab-²", "ab-١٢", "ab-①",
])
def test_cursor_parse_garbage_matches_no_history(raw: str) -> None:
    cursor = Cursor.parse(raw)
    assert cursor is not None
    assert cursor.seq >= 0
    assert cursor.epoch == "?" or cursor.seq == int(raw.rpartition("-")[2])


def test_cursor_parse_nineteen_digits_accepted() -> None:
    assert Cursor.parse("ab-" + "9" * 19) == Cursor("ab", int("9" * 19))


cursor_texts = st.text() | st.builds(
    "{}-{}".format, st.text(min_size=1, max_size=6),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=4),
)


@settings(database=None)
@given(raw=cursor_texts)
def test_cursor_parse_any_text_never_raises(raw: str) -> None:
    cursor = Cursor.parse(raw)
    assert cursor is None or (isinstance(cursor.seq, int) and cursor.seq >= 0)


# -- timestamps ---------------------------------------------------------------


def test_timestamp_now_rfc3339_milliseconds_z() -> None:
    stamp = timestamp_now()
    assert RFC3339_MS.match(stamp), stamp
    parsed = datetime.fromisoformat(stamp)
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - parsed) < timedelta(seconds=5)


def test_timestamps_across_a_second_are_the_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The date and time are formatted once a second: a new second gets its own."""
    for now, expected in ((1764900000.9996, "2025-12-05T02:00:00.999Z"),
                          (1764900001.0004, "2025-12-05T02:00:01.000Z"),
                          (1764900001.25, "2025-12-05T02:00:01.250Z"),
                          (1767225599.5, "2025-12-31T23:59:59.500Z"),
                          (1767225600.0, "2026-01-01T00:00:00.000Z")):
        monkeypatch.setattr("time.time", lambda now=now: now)
        assert timestamp_now() == expected
        assert datetime.fromisoformat(expected) == datetime.fromtimestamp(now, UTC).replace(
            microsecond=datetime.fromtimestamp(now, UTC).microsecond // 1000 * 1000)


def test_frames_encode_as_their_parts_back_to_back() -> None:
    parts = [Message("room:x", presence_frame(kind, "room:x", user))
             for kind, user in (("join", "a"), ("join", "b"), ("leave", "a"))]
    together = Frames(parts)
    assert together.channel == "room:x" and together.seq is None and together.id is None
    assert together.ws_frame == b"".join(p.ws_frame for p in parts)
    assert together.sse == b"".join(p.sse for p in parts)
    assert together.sse_chunk == http_chunk(b"".join(p.sse for p in parts))
