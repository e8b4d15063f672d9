"""The live endpoints' request (transports/asgi.py): query arguments as Quart reads them."""

from __future__ import annotations

from urllib.parse import parse_qsl

from hypothesis import given
from hypothesis import strategies as st

from hubbub.transports.asgi import Request


def _expected(query: bytes) -> dict[str, str]:
    args: dict[str, str] = {}
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        args.setdefault(key, value)
    return args


def _args(query: bytes) -> dict[str, str]:
    return Request({"query_string": query}, "/sse/chat").args


def test_the_first_of_a_repeated_argument_wins_and_blank_ones_are_kept() -> None:
    assert _args(b"room=lobby&room=other&heartbeat=&token") == {
        "room": "lobby", "heartbeat": "", "token": ""}


def test_escapes_are_decoded() -> None:
    assert _args(b"room=a%20b&text=c+d&%72oom=e") == {"room": "a b", "text": "c d"}


@given(st.lists(st.sampled_from(["room", "token", "=", "&", "%", "+", "41", "a", "é", ";", "%2", "%e9"]),
                max_size=12))
def test_every_query_reads_as_parse_qsl_reads_it(parts: list[str]) -> None:
    query = "".join(parts).encode()
    assert _args(query) == _expected(query)
