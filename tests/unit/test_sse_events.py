"""The SSE transport's retry event (transports/sse.py) is sse-starlette's, byte for byte."""

from __future__ import annotations

from unittest import mock

from hypothesis import given
from hypothesis import strategies as st
from sse_starlette.event import ServerSentEvent

from hubbub.transports import sse


@given(st.none() | st.text())
def test_the_retry_event_is_the_encoders(data: str | None) -> None:
    with mock.patch.object(sse, "retry_hint_ms", return_value=2345):
        assert sse._retry_event(data) == ServerSentEvent(data, retry=2345, sep="\n").encode()


def test_a_welcome_rides_in_one_data_line_after_its_retry_hint() -> None:
    with mock.patch.object(sse, "retry_hint_ms", return_value=1500):
        assert sse._retry_event('{"type":"welcome"}') == b'data: {"type":"welcome"}\nretry: 1500\n\n'
