"""Log redaction: token=, ticket= and api_key= values never reach a log line, wherever they sit in the
record, however the name is spelled (percent-encoded, any case)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from hubbub.observability import RedactingFilter, redact

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


# -- parameter names as the app reads them: percent-decoded, case-folded -----------------


@pytest.mark.parametrize(("text", "expected"), [
    (f"GET /sse/chat?room=x&%74oken={TOKEN} HTTP/1.1", "GET /sse/chat?room=x&%74oken=[redacted] HTTP/1.1"),
    (f"/a?t%6Fk%65n={TOKEN}", "/a?t%6Fk%65n=[redacted]"),
    (f"/a?%54%4F%4B%45%4E={TOKEN}", "/a?%54%4F%4B%45%4E=[redacted]"),
    (f"/a?TOKEN={TOKEN}&Ticket={TICKET}", "/a?TOKEN=[redacted]&Ticket=[redacted]"),
    (f"/a?t%69cket={TICKET}", "/a?t%69cket=[redacted]"),
    (f"/a?api_key={TOKEN}&API%5Fkey={TOKEN}", "/a?api_key=[redacted]&API%5Fkey=[redacted]"),
    (f"/a?to\u212aen={TOKEN}", "/a?to\u212aen=[redacted]"),  # KELVIN SIGN case-folds to k
    (f'"https://app.example/?T%4FKEN={TOKEN}" "Mozilla"',
     '"https://app.example/?T%4FKEN=[redacted]" "Mozilla"'),
])
def test_redact_encoded_or_cased_names_hidden(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    f"q=%74oken={TOKEN}",  # an access-log format that names the query atom: q=%(q)s
    f"query=room=x&%74oken={TOKEN}",
    f"/login?next=/sse/chat%3Froom=x&next2=/a?token={TOKEN}",
    f"GET /a?next=/b?token={TOKEN} HTTP/1.1",
    f"(token={TOKEN})",
    f"token={TOKEN}=={TOKEN}",  # base64 padding or a second '=' inside the value
    f"/a?token={TOKEN}&token={TOKEN}",
    f"/a?token={TOKEN};ticket={TICKET}",
    f"/a?x=1&amp;token={TOKEN}",
])
def test_redact_secret_inside_other_values_hidden(text: str) -> None:
    redacted = redact(text)
    assert TOKEN not in redacted and TICKET not in redacted, redacted


@pytest.mark.parametrize("text", [
    "/a?access_token_hint=1&room=x",
    "/a?tokens=1&my_ticket=2&apikey_id=3&key=4",
    "/a?to%6Bens=1",
    "hubbub ready: backend=memory",
    "a == b",
    "=token",
    "x=",
    "",
])
def test_redact_other_names_untouched(text: str) -> None:
    assert redact(text) == text


def test_redact_long_line_of_many_pairs_hidden() -> None:
    line = "a=" * 50_000 + "b" * 100_000 + f"&token={TOKEN}"
    assert redact(line).endswith("&token=[redacted]")


def test_redacting_filter_encoded_name_in_mapping_args_hidden() -> None:
    atoms = {"h": "10.0.0.1", "r": f"GET /sse/chat?room=x&%74oken={TOKEN} 1.1", "s": 401,
             "f": f"https://app.example/?T%4FKEN={TOKEN}"}
    rec = record('%(h)s "%(r)s" %(s)s "%(f)s"', atoms)
    message = filtered_message(rec)
    assert TOKEN not in message
    assert message.count("=[redacted]") == 2


def test_redacting_filter_no_secret_record_left_alone() -> None:
    rec = record("backend=%s room=%s", "memory", "lobby")
    assert filtered_message(rec) == "backend=memory room=lobby"
    assert rec.msg == "backend=%s room=%s" and rec.args == ("memory", "lobby")  # not reformatted


def test_redacting_filter_exception_text_hidden(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError(f"cannot open /ws/chat?room=x&%74oken={TOKEN}")
    except ValueError:
        logger.exception("connection failed")
    output = stream.getvalue()
    assert "Traceback" in output and "ValueError" in output
    assert TOKEN not in output and "%74oken=[redacted]" in output
