"""Origin checks (WebSocket and SSE) and CORS headers: ``null`` and host-less origins are never
"same origin" nor covered by ``*``; only a literal ``null`` entry in ALLOWED_ORIGINS allows them."""

from __future__ import annotations

import pytest

from hubbub.config import Settings
from hubbub.errors import Forbidden
from hubbub.transports.common import check_origin, cors_headers, origin_allowed

HOST = "hub.example:8000"


def settings(*origins: str) -> Settings:
    return Settings(allowed_origins=origins)


@pytest.mark.parametrize(("allowed", "origin", "verdict"), [
    ((), None, True),  # curl, servers: no Origin
    ((), "http://hub.example:8000", True),  # same origin
    ((), "https://evil.example", False),
    ((), "null", False),
    ((), "file://", False),
    ((), "http://", False),
    ((), "", False),
    ((), "http://[", False),  # urlsplit raises on it
    (("https://app.example",), "https://app.example", True),
    (("https://app.example",), "null", False),
    (("*",), "https://anyone.example", True),
    (("*",), "null", False),
    (("*",), "file://", False),
    (("*",), "*", False),
    (("*",), "http://[", False),
    (("null",), "null", True),
    (("null",), "https://evil.example", False),
    (("https://app.example", "null"), "null", True),
])
def test_origin_allowed_table(allowed: tuple[str, ...], origin: str | None, verdict: bool) -> None:
    assert origin_allowed(settings(*allowed), origin, HOST) is verdict


@pytest.mark.parametrize("host", ["", "hub.example:8000"])
def test_origin_allowed_without_host_never_same_origin(host: str) -> None:
    # A request without a Host header (HTTP/1.0) has host "": "null" has no host either.
    for origin in ("null", "file://", "http://", "data:text/html,x"):
        assert origin_allowed(settings(), origin, host) is False


def test_check_origin_null_forbidden() -> None:
    with pytest.raises(Forbidden):
        check_origin(settings("https://app.example"), {"Origin": "null"}, HOST)
    check_origin(settings("null"), {"Origin": "null"}, HOST)


@pytest.mark.parametrize(("allowed", "origin", "echoed"), [
    (("https://app.example",), "https://app.example", "https://app.example"),
    (("https://app.example",), "null", None),
    (("https://app.example",), "https://evil.example", None),
    (("*",), "null", None),
    (("*",), "https://anyone.example", "https://anyone.example"),
    (("null",), "null", "null"),
    ((), "null", None),
    ((), "https://app.example", None),  # no allow-list: same-origin callers need no CORS
])
def test_cors_headers_allow_origin(allowed: tuple[str, ...], origin: str, echoed: str | None) -> None:
    assert cors_headers(settings(*allowed), origin).get("Access-Control-Allow-Origin") == echoed


def test_settings_allowed_origins_literal_null_accepted() -> None:
    env = {"JWT_SECRET": "x" * 32, "ALLOWED_ORIGINS": "https://app.example null"}
    assert Settings.from_env(env).allowed_origins == ("https://app.example", "null")
    for bad in ("NULL", "nul", "null://x"):
        with pytest.raises(ValueError, match="ALLOWED_ORIGINS"):
            Settings.from_env({**env, "ALLOWED_ORIGINS": bad})
