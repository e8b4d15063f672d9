"""What clients send: WebSocket frames and POST bodies. Every failure is a BadRequest, never a crash."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubbub.errors import BadRequest, UnsupportedMediaType
from hubbub.hub.message import dumps
from hubbub.transports.inbound import (
    MAX_REF_LENGTH,
    ClientFrame,
    chat_text_from_body,
    json_object,
    parse_frame,
)

FUZZ = settings(database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow])

# Text that may hold lone surrogates: JSON can carry them as \ud800 escapes.
any_text = st.text() | st.text(
    alphabet=st.characters(min_codepoint=0xD700, max_codepoint=0xE100, exclude_categories=()), min_size=1,
)
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | any_text
    | st.sampled_from(["chat", "ping", "auth", "", " ", "\x00"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["type", "text", "ref", "token", "x"]) | st.text(max_size=5),
                      inner, max_size=5),
    max_leaves=15,
)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["chat", "ping", "auth"]) | json_values},
    optional={"text": any_text | json_values, "ref": any_text | json_values, "token": any_text | json_values},
)


def parses_or_bad_request(data: str | bytes) -> ClientFrame | None:
    try:
        frame = parse_frame(data)
    except BadRequest:
        return None
    assert isinstance(frame, ClientFrame)
    return frame


def assert_valid(frame: ClientFrame) -> None:
    assert frame.type in ("chat", "ping", "auth")
    if frame.type == "chat":
        assert isinstance(frame.text, str) and frame.text.strip() and "\x00" not in frame.text
        assert frame.ref is None or (isinstance(frame.ref, str) and len(frame.ref) <= MAX_REF_LENGTH)
    if frame.type == "auth":
        assert isinstance(frame.token, str) and frame.token


# -- property ------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=200))
def test_parse_frame_any_bytes_frame_or_bad_request(data: bytes) -> None:
    frame = parses_or_bad_request(data)
    if frame is not None:
        assert_valid(frame)


@FUZZ
@given(data=st.text(max_size=200))
def test_parse_frame_any_text_frame_or_bad_request(data: str) -> None:
    frame = parses_or_bad_request(data)
    if frame is not None:
        assert_valid(frame)


@FUZZ
@given(value=json_values | frames, as_bytes=st.booleans())
def test_parse_frame_any_json_value_frame_or_bad_request(value: Any, as_bytes: bool) -> None:
    text = json.dumps(value)
    frame = parses_or_bad_request(text.encode() if as_bytes else text)
    if frame is not None:
        assert_valid(frame)


@FUZZ
@given(value=frames | st.fixed_dictionaries(
    {"type": st.sampled_from(["chat", "auth"]), "text": any_text, "token": any_text},
    optional={"ref": any_text},
))
def test_parse_frame_any_accepted_frame_encodable_as_utf8(value: dict[str, Any]) -> None:
    # json.dumps escapes lone surrogates (\ud800), which json.loads turns back into str that
    # cannot be encoded: such a frame must be refused, not published to every subscriber.
    frame = parses_or_bad_request(json.dumps(value))
    if frame is not None:
        for field in (frame.text, frame.ref or "", frame.token):
            field.encode("utf-8")


# -- explicit cases --------------------------------------------------------------


def test_parse_frame_chat_valid_frame() -> None:
    assert parse_frame('{"type":"chat","text":"hi","ref":"r1"}') == ClientFrame("chat", text="hi", ref="r1")


def test_parse_frame_bytes_valid_frame() -> None:
    assert parse_frame('{"type":"chat","text":"héllo"}'.encode()) == ClientFrame("chat", text="héllo")


def test_parse_frame_ping_extra_fields_ignored() -> None:
    assert parse_frame('{"type":"ping","x":[1,2]}') == ClientFrame("ping")


def test_parse_frame_auth_token_kept() -> None:
    assert parse_frame('{"type":"auth","token":"abc.def.ghi"}') == ClientFrame("auth", token="abc.def.ghi")


def test_parse_frame_ref_at_limit_accepted() -> None:
    ref = "r" * MAX_REF_LENGTH
    assert parse_frame(json.dumps({"type": "chat", "text": "hi", "ref": ref})).ref == ref


@pytest.mark.parametrize("data", [
    pytest.param(b"\xff\xfe", id="invalid-utf8"),
    pytest.param(b'{"type":"chat","text":"\xc3"}', id="truncated-utf8"),
    pytest.param(b'{"type":"chat","text":"\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
    pytest.param("[" * 100000, id="deep-array"),
    pytest.param('{"a":' * 100000, id="deep-object"),
    pytest.param('{"type":"ping","x":' + "[" * 100000 + "]" * 100000 + "}", id="deep-inside-valid"),
    pytest.param("1" * 100000, id="huge-integer"),
    pytest.param('{"type":"chat","text":"hi","ref":' + "9" * 100000 + "}", id="huge-integer-field"),
    pytest.param("", id="empty"),
    pytest.param(b"", id="empty-bytes"),
    pytest.param("   ", id="whitespace"),
    pytest.param("\x00", id="nul"),
    pytest.param('{"type":"chat","text":"hi"}\x00', id="trailing-nul"),
    pytest.param('\ufeff{"type":"ping"}', id="bom"),
    pytest.param("null", id="null"),
    pytest.param("[]", id="array"),
    pytest.param('"chat"', id="string"),
    pytest.param("{}", id="no-type"),
    pytest.param('{"type":null}', id="null-type"),
    pytest.param('{"type":1}', id="int-type"),
    pytest.param('{"type":["chat"]}', id="list-type"),
    pytest.param('{"type":{"chat":1}}', id="object-type"),
    pytest.param('{"type":"CHAT","text":"hi"}', id="wrong-case-type"),
    pytest.param('{"type":"subscribe"}', id="unknown-type"),
    pytest.param('{"type":"' + "x" * 100000 + '"}', id="huge-unknown-type"),
    pytest.param('{"type":"chat"}', id="missing-text"),
    pytest.param('{"type":"chat","text":null}', id="null-text"),
    pytest.param('{"type":"chat","text":42}', id="int-text"),
    pytest.param('{"type":"chat","text":["hi"]}', id="list-text"),
    pytest.param('{"type":"chat","text":{"t":"hi"}}', id="object-text"),
    pytest.param('{"type":"chat","text":""}', id="empty-text"),
    pytest.param('{"type":"chat","text":" \\t\\n\\r "}', id="whitespace-text"),
    pytest.param('{"type":"chat","text":"a\\u0000b"}', id="nul-in-text"),
    pytest.param('{"type":"chat","text":"hi","ref":1}', id="int-ref"),
    pytest.param('{"type":"chat","text":"hi","ref":["r"]}', id="list-ref"),
    pytest.param('{"type":"chat","text":"hi","ref":NaN}', id="nan-ref"),
    pytest.param(json.dumps({"type": "chat", "text": "hi", "ref": "r" * (MAX_REF_LENGTH + 1)}),
                 id="long-ref"),
    pytest.param('{"type":"auth"}', id="missing-token"),
    pytest.param('{"type":"auth","token":""}', id="empty-token"),
    pytest.param('{"type":"auth","token":123}', id="int-token"),
])
def test_parse_frame_invalid_input_bad_request(data: str | bytes) -> None:
    with pytest.raises(BadRequest):
        parse_frame(data)


@pytest.mark.parametrize("data", [
    pytest.param('{"type":"chat","text":"\\ud800"}', id="text"),
    pytest.param('{"type":"chat","text":"hi \\udfff there"}', id="text-low-surrogate"),
    pytest.param('{"type":"chat","text":"hi","ref":"\\ud800"}', id="ref"),
    pytest.param('{"type":"auth","token":"\\ud800"}', id="token"),
])
def test_parse_frame_lone_surrogate_escape_bad_request(data: str) -> None:
    # Accepted, it crashes later: UTF-8 encoding the message for WebSocket/SSE raises
    # UnicodeEncodeError on every subscriber's writer, and PyJWT raises it on the token.
    with pytest.raises(BadRequest):
        parse_frame(data)


def test_parse_frame_escaped_surrogate_pair_accepted() -> None:
    assert parse_frame('{"type":"chat","text":"\\ud83d\\ude00"}').text == "\U0001f600"


def test_parse_frame_unknown_type_names_it() -> None:
    with pytest.raises(BadRequest, match="'publish'.*one of auth, chat, ping, subscribe, unsubscribe"):
        parse_frame('{"type":"publish"}')


@pytest.mark.parametrize("frame", ['{"type":"subscribe"}', '{"type":"unsubscribe","channel":""}',
                                   '{"type":"subscribe","channel":7}',
                                   '{"type":"chat","text":"x","channel":[]}'])
def test_parse_frame_channel_must_be_a_string(frame: str) -> None:
    with pytest.raises(BadRequest, match="'channel' must be a non-empty string"):
        parse_frame(frame)


# -- POST bodies -----------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "body", "text"), [
    ("application/json", b'{"text":"hi"}', "hi"),
    ("application/json; charset=utf-8", b'{"text":"hi","extra":1}', "hi"),
    ("Application/JSON", b'{"text":"h\\u00e9"}', "hé"),
    ("text/plain", b"hi", "hi"),
    ("text/plain; charset=utf-8", "héllo\nworld".encode(), "héllo\nworld"),
    ("", b"hi", "hi"),
    ("application/x-www-form-urlencoded", b"hi", "hi"),  # curl -d hi
    ("application/x-www-form-urlencoded", b"hello world & more", "hello world & more"),
    ("application/x-www-form-urlencoded", b"text=a+b", "a b"),  # a real form
    ("application/x-www-form-urlencoded", b"text=a%26b%3Dc", "a&b=c"),
    ("application/x-www-form-urlencoded", b"text=hi&room=lobby", "hi"),
])
def test_chat_text_from_body_supported_types_text(content_type: str, body: bytes, text: str) -> None:
    assert chat_text_from_body(content_type, body) == text


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b"not json"),
    ("application/json", b'["hi"]'),
    ("application/json", b'"hi"'),
    ("application/json", b'{"text":""}'),
    ("application/json", b'{"text":"  "}'),
    ("application/json", b'{"text":1}'),
    ("application/json", b'{"msg":"hi"}'),
    ("application/json", b"\xff"),
    ("application/json", b"[" * 100000),
    ("application/json", b'{"text":"\\ud800"}'),
    ("text/plain", b""),
    ("text/plain", b" \n\t"),
    ("text/plain", b"\xff\xfe"),
    ("text/plain", b"a\x00b"),
    ("application/x-www-form-urlencoded", b"text="),
    ("application/x-www-form-urlencoded", b"text=+"),
    ("application/x-www-form-urlencoded", b"text=%00"),
    ("application/x-www-form-urlencoded", b"\xff"),
])
def test_chat_text_from_body_invalid_bad_request(content_type: str, body: bytes) -> None:
    with pytest.raises(BadRequest):
        chat_text_from_body(content_type, body)


@pytest.mark.parametrize("content_type", [
    "multipart/form-data; boundary=x", "application/xml", "image/png", "application/octet-stream",
])
def test_chat_text_from_body_unsupported_type_unsupported_media_type(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        chat_text_from_body(content_type, b"hi")
    assert caught.value.status == 415


@FUZZ
@given(content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                     ""]),
       body=st.binary(max_size=100) | st.text(max_size=100).map(str.encode))
def test_chat_text_from_body_any_body_text_or_bad_request(content_type: str, body: bytes) -> None:
    try:
        text = chat_text_from_body(content_type, body)
    except BadRequest:
        return
    assert text.strip() and "\x00" not in text
    text.encode("utf-8")


# -- non-finite numbers ----------------------------------------------------------------
# Python's json reads NaN, Infinity and 1e999 (as inf); every writer here refuses them
# (allow_nan=False), so accepting one meant a 500 later, on the way out.

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400", "123456789e9999", "-0.5e+999"]


@pytest.mark.parametrize("number", NON_FINITE)
def test_parse_frame_non_finite_number_anywhere_bad_request(number: str) -> None:
    for frame in ('{"type":"ping","x":%s}', '{"type":"chat","text":"hi","ref":%s}',
                  '{"type":"chat","text":"hi","deep":[{"a":[%s]}]}', "%s"):
        with pytest.raises(BadRequest, match="non-finite numbers .* are not JSON"):
            parse_frame(frame.replace("%s", number))


@pytest.mark.parametrize("number", NON_FINITE)
def test_json_bodies_non_finite_number_bad_request(number: str) -> None:
    body = '{"user":"bob","data":{"x":[1,%s]}}'.replace("%s", number).encode()
    with pytest.raises(BadRequest, match="non-finite"):
        json_object("application/json", body)
    with pytest.raises(BadRequest, match="non-finite"):
        chat_text_from_body("application/json", '{"text":"hi","x":%s}'.replace("%s", number).encode())


@pytest.mark.parametrize(("number", "value"), [
    ("1.5", 1.5), ("-0.0", -0.0), ("1e308", 1e308), ("1e-999", 0.0), ("2E-3", 0.002), ("10", 10),
    ("1" * 300, int("1" * 300)),
])
def test_json_object_finite_numbers_kept(number: str, value: float) -> None:
    assert json_object("application/json", '{"x":%s}'.replace("%s", number).encode()) == {"x": value}


def test_parse_frame_non_finite_as_text_accepted() -> None:
    assert parse_frame('{"type":"chat","text":"NaN Infinity 1e999"}').text == "NaN Infinity 1e999"


@FUZZ
@given(value=st.dictionaries(st.text(max_size=5), json_values, max_size=5),
       floats=st.lists(st.floats() | st.sampled_from(["1e999", "-1E400", "NaN"]), max_size=3))
def test_json_object_any_accepted_body_can_be_written_back(value: dict[str, Any], floats: list[Any]) -> None:
    body = json.dumps({**value, "floats": floats})  # NaN and Infinity as Python writes them
    try:
        accepted = json_object("application/json", body.encode())
    except BadRequest:
        return
    dumps(accepted)  # what the hub does with it: allow_nan=False, must not raise
