"""Parses what clients send: WebSocket frames and POST bodies. Every failure is a BadRequest."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from hubbub.errors import BadRequest, UnsupportedMediaType
from hubbub.protocol import CLIENT_FRAMES

MAX_REF_LENGTH = 128


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """One validated client frame: ``chat`` (text, ref, channel), ``ping``, ``auth`` (token),
    ``subscribe`` or ``unsubscribe`` (channel, ref)."""

    type: str
    text: str = ""
    ref: str | None = None
    token: str = ""
    channel: str | None = None  # as the client sent it: checked where it is used


_NON_FINITE = "non-finite numbers (NaN, Infinity, 1e999) are not JSON"


def _refuse_constant(name: str) -> Any:
    raise BadRequest(_NON_FINITE)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf, which no JSON encoder can write back
        raise BadRequest(_NON_FINITE)
    return value


def _loads(data: str | bytes) -> Any:
    """Strict JSON (RFC 8259): Python's json also takes NaN and Infinity, which every
    writer here (allow_nan=False) then refuses, so they are refused on the way in."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise BadRequest("frames must be UTF-8 text") from None
    except RecursionError:
        raise BadRequest("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints beyond the digit limit
        raise BadRequest(f"malformed JSON: {exc}") from None


def _unicode(value: str, name: str) -> str:
    """Refuses lone surrogates: JSON allows them, UTF-8 (every wire we write) does not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"'{name}' must be valid Unicode (no lone surrogates)") from None
    return value


def valid_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("'text' must be a non-empty string")
    if "\x00" in value:
        raise BadRequest("'text' must not contain NUL characters")
    return _unicode(value, "text")


def parse_frame(data: str | bytes) -> ClientFrame:
    """A WebSocket frame from a client: a JSON object with a known ``type``."""
    value = _loads(data)
    if not isinstance(value, dict):
        raise BadRequest("a frame must be a JSON object with a 'type'")
    kind = value.get("type")
    if kind == "chat":
        return ClientFrame("chat", text=valid_text(value.get("text")), ref=_ref(value),
                           channel=_channel(value, required=False))
    if kind in ("subscribe", "unsubscribe"):
        return ClientFrame(kind, ref=_ref(value), channel=_channel(value, required=True))
    if kind == "ping":
        return ClientFrame("ping")
    if kind == "auth":
        token = value.get("token")
        if not isinstance(token, str) or not token:
            raise BadRequest("'token' must be a non-empty string")
        return ClientFrame("auth", token=_unicode(token, "token"))
    if not isinstance(kind, str):
        raise BadRequest("a frame must be a JSON object with a string 'type'")
    raise BadRequest(f"unknown type {kind[:40]!r}: expected one of {', '.join(sorted(CLIENT_FRAMES))}")


def _ref(frame: dict[str, Any]) -> str | None:
    ref = frame.get("ref")
    if ref is not None and (not isinstance(ref, str) or len(ref) > MAX_REF_LENGTH):
        raise BadRequest(f"'ref' must be a string of at most {MAX_REF_LENGTH} characters")
    return None if ref is None else _unicode(ref, "ref")


def _channel(frame: dict[str, Any], *, required: bool) -> str | None:
    channel = frame.get("channel")
    if channel is None and not required:
        return None
    if not isinstance(channel, str) or not channel:
        raise BadRequest("'channel' must be a non-empty string, e.g. \"room:lobby\"")
    return _unicode(channel, "channel")


def chat_text_from_body(content_type: str, body: bytes) -> str:
    """Chat text from a POST: JSON ``{"text"}``, a plain body, or what ``curl -d 'hi'`` sends."""
    mimetype = content_type.split(";", 1)[0].strip().lower()
    if mimetype == "application/json":
        value = _loads(body)
        if not isinstance(value, dict):
            raise BadRequest('the JSON body must be an object like {"text": "hi"}')
        return valid_text(value.get("text"))
    if mimetype in ("text/plain", "application/x-www-form-urlencoded", ""):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the body must be UTF-8 text") from None
        if mimetype == "application/x-www-form-urlencoded" and text.startswith("text="):
            # A real form (curl --data-urlencode text=hi); a bare `curl -d 'hi'` is raw text.
            text = parse_qs(text, keep_blank_values=True).get("text", [""])[0]
        return valid_text(text)
    raise UnsupportedMediaType(
        f"content type {mimetype!r} not supported: use application/json or text/plain"
    )


def json_value(content_type: str, body: bytes) -> Any:
    """A JSON body (object or array), for endpoints that only take JSON."""
    mimetype = content_type.split(";", 1)[0].strip().lower()
    if mimetype != "application/json":
        raise UnsupportedMediaType(f"content type {mimetype!r} not supported: use application/json")
    value = _loads(body)
    # Any string in it may be relayed whole (event data), so check them all at once.
    _unicode(json.dumps(value, ensure_ascii=False), "the body")
    return value


def text_from_body(body: bytes) -> str:
    """A plain body as text (``text/plain``, or what a bare ``curl -d`` sends)."""
    try:
        return valid_text(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the body must be UTF-8 text") from None


def json_object(content_type: str, body: bytes) -> dict[str, Any]:
    """A JSON object body, for endpoints that only take JSON."""
    mimetype = content_type.split(";", 1)[0].strip().lower()
    if mimetype != "application/json":
        raise UnsupportedMediaType(f"content type {mimetype!r} not supported: use application/json")
    value = _loads(body)
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    # Any string in it may be relayed whole (notification data), so check them all at once.
    _unicode(json.dumps(value, ensure_ascii=False), "the body")
    return value
