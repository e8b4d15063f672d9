"""Log redaction: token= and ticket= values never reach a log line, wherever they sit in the record."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from app.observability import RedactingFilter, redact

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
TICKET = "Zm9vYmFyYmF6cXV4cXV1eA"


def record(msg: object, *args: object) -> logging.LogRecord:
    return logging.LogRecord("test", logging.INFO, __file__, 1, msg, args or None, None)


def filtered_message(rec: logging.LogRecord) -> str:
    assert RedactingFilter().filter(rec) is True  # redacts; never drops a line
    return rec.getMessage()


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.unit.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


# -- redact ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    (f"GET /ws/chat?token={TOKEN} HTTP/1.1", "GET /ws/chat?token=[redacted] HTTP/1.1"),
    (f"GET /ws/chat?room=lobby&token={TOKEN}&since=e-1",
     "GET /ws/chat?room=lobby&token=[redacted]&since=e-1"),
    (f"GET /sse/notifications?ticket={TICKET}", "GET /sse/notifications?ticket=[redacted]"),
    (f'"https://app.example/?token={TOKEN}" "Mozilla"', '"https://app.example/?token=[redacted]" "Mozilla"'),
    (f"/a?token={TOKEN}&ticket={TICKET}", "/a?token=[redacted]&ticket=[redacted]"),
    ("/a?token=", "/a?token=[redacted]"),
    ("/a?room=lobby&since=e-1", "/a?room=lobby&since=e-1"),
])
def test_redact_query_values_hidden(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    f"token={TOKEN}&room=lobby",  # a bare query string, as Hypercorn's %(q)s access-log atom logs it
    f"auth failed for token={TOKEN}",
    f"ticket={TICKET}",
])
def test_redact_token_outside_url_hidden(text: str) -> None:
    assert TOKEN not in redact(text) and TICKET not in redact(text)


def test_redact_other_parameters_untouched() -> None:
    assert redact("/a?access_token_hint=1&room=x") == "/a?access_token_hint=1&room=x"


# -- RedactingFilter ----------------------------------------------------------------


def test_redacting_filter_token_in_message_hidden() -> None:
    message = filtered_message(record(f"GET /ws/chat?token={TOKEN} 101"))
    assert TOKEN not in message
    assert "token=[redacted]" in message


def test_redacting_filter_token_in_args_hidden() -> None:
    rec = record('%s "%s" %s', "127.0.0.1", f"GET /ws/chat?room=lobby&token={TOKEN} HTTP/1.1", 101)
    message = filtered_message(rec)
    assert TOKEN not in message
    assert message == '127.0.0.1 "GET /ws/chat?room=lobby&token=[redacted] HTTP/1.1" 101'
    assert not rec.args  # formatted once, so no handler re-formats the secret back in


def test_redacting_filter_ticket_in_mapping_args_hidden() -> None:
    # Hypercorn's access log passes one mapping of atoms: %(r)s, %(s)s …
    rec = record("%(h)s %(r)s %(s)s", {"h": "10.0.0.1", "r": f"GET /sse/chat?ticket={TICKET} HTTP/1.1",
                                       "s": 200})
    message = filtered_message(rec)
    assert TICKET not in message
    assert message == "10.0.0.1 GET /sse/chat?ticket=[redacted] HTTP/1.1 200"


def test_redacting_filter_no_secret_message_unchanged() -> None:
    rec = record("user %s joined %s", "alice", "room:lobby")
    assert filtered_message(rec) == "user alice joined room:lobby"


def test_redacting_filter_non_string_message_hidden() -> None:
    message = filtered_message(record(ValueError(f"bad url /ws?token={TOKEN}")))
    assert TOKEN not in message


def test_redacting_filter_mismatched_args_does_not_raise(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    # Without the filter logging reports a bad call on stderr and carries on; the filter must
    # not turn it into an exception inside whatever request happened to log.
    logger, stream = captured
    logger.info("%s and %s", f"/ws?token={TOKEN}")
    assert TOKEN not in stream.getvalue()


def test_redacting_filter_on_handler_output_hidden(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("connect %s", f"/ws/notifications?ticket={TICKET}&token={TOKEN}")
    logger.warning(f"GET /?token={TOKEN}")
    output = stream.getvalue()
    assert TOKEN not in output and TICKET not in output
    assert output.count("[redacted]") == 3
