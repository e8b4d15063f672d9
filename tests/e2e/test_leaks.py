"""Bad input gets a clear 4xx and the answer leaks nothing: no 500, no traceback, no secret in a
log line, no memory address, no off-site redirect; every response carries its security headers."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypercorn.asyncio import serve
from hypercorn.config import Config
from websockets.exceptions import InvalidStatus

import hubbub.transports.site as site
from app import create_app
from hubbub.config import Settings
from tests.conftest import SECRET, LiveServer, ServerFactory, make_token
from tests.e2e.clients import (
    TIMEOUT_S,
    bearer,
    recv_json,
    recv_until,
    sse_connect,
    ws_connect,
    ws_rejected,
)

CLIENT_LOGGERS = ("httpx", "httpcore", "websockets")  # the test's own clients, not the server
# Hypercorn's default logs the path and the Referer; operators add the query: %(R)s, %(q)s.
ACCESS_LOG_FORMAT = '%(h)s "%(R)s" %(s)s %(b)s "%(f)s" "%(a)s" q=%(q)s'


# -- a server whose access and error logs are on -------------------------------------------


class LogLines(logging.Handler):
    """Every server log record that reaches the root logger, formatted as a log file shows it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(CLIENT_LOGGERS) or str(record.msg).startswith("Running on"):
            return  # the test's clients; Hypercorn's start-up line, which may come after the app's
        self.records.append(record)
        self.lines.append(self.format(record))
        self._changed.set()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def clear(self) -> None:
        self.records.clear()
        self.lines.clear()

    def access_lines(self) -> list[str]:
        return [line for line, record in zip(self.lines, self.records, strict=True)
                if record.name == "hypercorn.access"]

    async def until(self, condition: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
        """Waits for the record that makes ``condition`` hold (access lines come after the response)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def logged_server(env: dict[str, str] | None = None) -> AsyncIterator[tuple[LiveServer, LogLines]]:
    """Like tests.conftest.run_server, with Hypercorn's access and error logs going where the app's go."""
    log = LogLines()
    root = logging.getLogger()
    root.addHandler(log)  # before create_app, which puts its RedactingFilter on every root handler
    try:
        settings = Settings.from_env({"JWT_SECRET": SECRET, **(env or {})})
        application = create_app(settings, handle_signals=False)
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        config.graceful_timeout = 2
        config.accesslog = logging.getLogger("hypercorn.access")
        config.errorlog = logging.getLogger("hypercorn.error")
        config.access_log_format = ACCESS_LOG_FORMAT
        stop = asyncio.Event()
        task = asyncio.create_task(serve(application, config, shutdown_trigger=stop.wait))
        try:
            # The socket listens already: requests would wait in its backlog until the app is ready.
            await log.until(lambda: task.done() or "hubbub ready" in log.text)
            assert not task.done(), "the server did not start"
            hub = application.extensions["hubbub"]["hubbub"].hub
            yield LiveServer(port=port, hub=hub, settings=settings), log
        finally:
            stop.set()
            async with asyncio.timeout(15):
                await task
    finally:
        root.removeHandler(log)


# -- 1. non-finite numbers -----------------------------------------------------------------


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400"]


@pytest.mark.parametrize("number", NON_FINITE)
async def test_notification_non_finite_number_400_bad_request(live_server: LiveServer, number: str) -> None:
    body = '{"user":"bob","data":{"x":' + number + "}}"
    async with live_server.http() as client:
        reply = await client.post("/api/notifications", content=body.encode(), headers={
            **bearer(live_server.token("ops", scope="notify")), "Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == "bad_request"
    assert "non-finite" in reply.json()["detail"]


async def test_post_message_non_finite_number_in_extra_field_400_bad_request(live_server: LiveServer) -> None:
    async with live_server.http() as client:
        reply = await client.post("/api/rooms/lobby/messages", content=b'{"text":"hi","meta":[1, NaN]}',
                                  headers={**bearer(live_server.token("alice")),
                                           "Content-Type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["error"] == "bad_request" and "non-finite" in reply.json()["detail"]


@pytest.mark.parametrize("frame", ['{"type":"ping","x":NaN}', '{"type":"chat","text":"hi","ref":1e999}'])
async def test_websocket_frame_non_finite_number_error_frame_and_stays_open(live_server: LiveServer,
                                                                            frame: str) -> None:
    token = live_server.token("mallory")
    async with ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send(frame)
        error = await recv_until(ws, "error")
        assert error["code"] == "bad_request" and "non-finite" in error["detail"]
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv_until(ws, "pong") == {"type": "pong"}


# -- 2. static paths the OS refuses --------------------------------------------------------


@pytest.mark.parametrize("path", ["/static/%00", "/static/demo%00.js", "/static/" + "a" * 300,
                                  "/static/" + "é" * 200 + ".js"],
                         ids=["nul", "nul-inside", "name-too-long", "name-too-long-in-bytes"])
async def test_static_name_the_os_refuses_404_json_one_log_line(path: str) -> None:
    async with logged_server() as (server, log), server.http() as client:
        log.clear()
        reply = await client.get(path)
        assert reply.status_code == 404
        assert reply.json()["error"] == "not_found" and len(reply.json()["detail"]) < 200
        await log.until(lambda: bool(log.access_lines()))
        assert len(log.lines) == 1, log.lines  # the access line, and nothing else
        assert not [r for r in log.records if r.exc_info or r.levelno >= logging.ERROR]
        assert "Traceback" not in log.text


async def test_static_directory_or_os_error_404_not_500(live_server: LiveServer, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "loop.js").symlink_to(tmp_path / "loop.js")  # ELOOP
    (tmp_path / "dangling.js").symlink_to(tmp_path / "gone.js")
    (tmp_path / "file.js").write_text("x")
    monkeypatch.setattr(site, "STATIC_DIR", tmp_path)
    async with live_server.http() as client:
        for name in ("folder", "folder/", "loop.js", "dangling.js", "file.js/inside", "nothing.js"):
            reply = await client.get(f"/static/{name}")
            assert reply.status_code == 404, (name, reply.text)
            assert reply.json()["error"] == "not_found"
        assert (await client.get("/static/file.js")).status_code == 200


# -- 3. Origin: null ---------------------------------------------------------------------


async def origin_verdicts(server: LiveServer, origin: str) -> tuple[str | None, int, int, int]:
    """(the API's Access-Control-Allow-Origin, the SSE status, the WebSocket status, the preflight's)."""
    token = server.token("alice")
    async with server.http() as client:
        api = await client.get("/api/rooms/lobby/messages", headers={**bearer(token), "Origin": origin})
        assert api.status_code == 200
        preflight = await client.options("/sse/chat?room=lobby", headers={
            "Origin": origin, "Access-Control-Request-Method": "GET"})
        async with asyncio.timeout(TIMEOUT_S):
            async with client.stream("GET", f"/sse/chat?room=lobby&token={token}",
                                     headers={"Origin": origin}) as sse:
                sse_status = sse.status_code
    url = f"{server.ws_url}/ws/chat?room=lobby&token={token}"
    try:
        async with ws_connect(url, origin=origin) as ws:  # type: ignore[arg-type]
            assert (await recv_json(ws))["type"] == "welcome"
        ws_status = 101
    except InvalidStatus as refused:
        ws_status = refused.response.status_code
    allowed = preflight.headers.get("Access-Control-Allow-Origin")
    assert allowed == api.headers.get("Access-Control-Allow-Origin")
    return allowed, sse_status, ws_status, preflight.status_code


@pytest.mark.parametrize("allowed", ["https://app.example", "*", "https://app.example *"])
async def test_origin_null_not_listed_refused(server_factory: ServerFactory, allowed: str) -> None:
    server = await server_factory({"ALLOWED_ORIGINS": allowed})
    cors, sse_status, ws_status, _ = await origin_verdicts(server, "null")
    assert cors is None
    assert sse_status == 403 and ws_status == 403


async def test_origin_null_listed_allowed(server_factory: ServerFactory) -> None:
    server = await server_factory({"ALLOWED_ORIGINS": "https://app.example null"})
    assert await origin_verdicts(server, "null") == ("null", 200, 101, 200)
    cors, sse_status, ws_status, _ = await origin_verdicts(server, "https://evil.example")
    assert (cors, sse_status, ws_status) == (None, 403, 403)


@pytest.mark.parametrize("origin", ["http://[", "file://", "http://"])
async def test_origin_malformed_or_without_host_403_not_500(server_factory: ServerFactory,
                                                           origin: str) -> None:
    server = await server_factory({"ALLOWED_ORIGINS": "*"})
    cors, sse_status, ws_status, _ = await origin_verdicts(server, origin)
    assert (cors, sse_status, ws_status) == (None, 403, 403)


# -- 4. X-Content-Type-Options on every response -------------------------------------------


async def test_every_http_response_nosniff(live_server: LiveServer) -> None:
    token = live_server.token("alice")
    async with live_server.http() as client:
        replies = {
            "page": await client.get("/"),
            "static": await client.get("/static/hubbub.js"),
            "health": await client.get("/healthz"),
            "metrics": await client.get("/metrics"),
            "quart 404": await client.get("/nowhere"),
            "quart 401": await client.get("/api/rooms/lobby/messages"),
            "quart 405": await client.delete("/api/rooms/lobby/messages"),
            "quart 202": await client.post("/api/rooms/lobby/messages", content=b"hi", headers=bearer(token)),
            "redirect": await client.get("/static//hubbub.js"),
            "sse 401": await client.get("/sse/chat?room=lobby"),
            "sse 405": await client.post("/sse/chat?room=lobby"),
            "sse preflight": await client.options("/sse/chat?room=lobby"),
            "ws without upgrade": await client.get("/ws/chat?room=lobby"),
        }
        async with sse_connect(client, f"/sse/chat?room=lobby&token={token}") as sse:
            replies["sse stream"] = sse.response
    missing = {name: r.status_code for name, r in replies.items()
               if r.headers.get("X-Content-Type-Options") != "nosniff"}
    assert not missing
    rejected = await ws_rejected(f"{live_server.ws_url}/ws/chat?room=no!such&token={token}")
    assert rejected.status_code == 400
    assert rejected.headers.get("X-Content-Type-Options") == "nosniff"


# -- 5. the demo page's Content-Security-Policy -------------------------------------------


async def test_demo_page_csp_same_origin_only_no_framing(live_server: LiveServer) -> None:
    async with live_server.http() as client:
        page = await client.get("/")
    assert page.status_code == 200
    policy = dict(
        (directive.split(" ", 1) + [""])[:2]
        for directive in (d.strip() for d in page.headers["Content-Security-Policy"].split(";")) if directive
    )
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    for directive in ("script-src", "style-src", "connect-src"):
        assert policy[directive] == "'self'", directive  # no 'unsafe-inline', no other hosts
    assert page.headers["X-Frame-Options"] == "DENY"


# -- 6. redirects stay on this site --------------------------------------------------------


@pytest.mark.parametrize(("path", "location"), [
    ("/api//rooms/lobby/messages", "/api/rooms/lobby/messages"),
    ("/static//hubbub.js?v=1", "/static/hubbub.js?v=1"),
    ("/static///demo.css", "/static/demo.css"),
])
async def test_redirect_forged_host_relative_location(live_server: LiveServer, path: str,
                                                      location: str) -> None:
    async with live_server.http() as client:
        reply = await client.get(path, headers={"Host": "evil.example"})
    assert reply.status_code in (301, 302, 307, 308)
    assert reply.headers["Location"] == location
    assert "evil.example" not in reply.text


# -- 7. token errors ---------------------------------------------------------------------


def b64url(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def handmade(header: dict[str, object], claims: dict[str, object] | None = None) -> str:
    claims = claims or {"sub": "mallory", "exp": int(time.time()) + 600}
    return f"{b64url(header)}.{b64url(claims)}.c2lnbmF0dXJl"


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize("header", [
    {"alg": "ES256", "typ": "JWT"},  # allowed by default with a public key, but the key is RSA
    {"alg": "RS256", "kid": 1},
    {"alg": "RS256", "kid": {"k": [1]}},
    {"alg": "RS256", "crit": ["<script>0x41 object at</script>"]},
    {"alg": "RS256", "crit": [1]},
    {"alg": ["RS256"]},
    {"alg": "HS256"},
    {"typ": "JWT"},
], ids=["key-type", "kid-int", "kid-object", "crit-text", "crit-int", "alg-list", "alg-hs", "no-alg"])
async def test_token_odd_header_401_detail_without_address_or_echo(server_factory: ServerFactory,
                                                                   rsa_pem: str,
                                                                   header: dict[str, object]) -> None:
    server = await server_factory({"JWT_SECRET": "", "JWT_PUBLIC_KEY": rsa_pem.replace("\n", "\\n")})
    token = handmade(header)
    async with server.http() as client:
        reply = await client.get("/api/rooms/lobby/messages", headers=bearer(token))
        sse = await client.get(f"/sse/chat?room=lobby&token={token}")
    ws = await ws_rejected(f"{server.ws_url}/ws/chat?room=lobby&token={token}")
    for status, body in ((reply.status_code, reply.json()), (sse.status_code, sse.json()),
                         (ws.status_code, json.loads(ws.body or b"{}"))):
        assert status == 401 and body["error"] == "unauthorized"
        assert "0x" not in body["detail"] and "object at" not in body["detail"], body
        assert "script" not in body["detail"]


@pytest.mark.parametrize(("token", "detail"), [
    (lambda: make_token("alice", ttl_s=-60), "token expired"),
    (lambda: make_token("alice", secret="another-secret-that-is-long-enough-for-hs256"), "bad signature"),
    (lambda: "not.a.jwt", "malformed token"),
    (lambda: jwt.encode({"sub": "alice", "exp": int(time.time()) + 600, "nbf": int(time.time()) + 300},
                        SECRET, algorithm="HS256"), "token not valid yet"),
    (lambda: jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "missing claim 'exp'"),
    (lambda: handmade({"alg": "none"}), "algorithm not allowed"),
], ids=["expired", "signature", "malformed", "not-yet", "missing-exp", "alg-none"])
async def test_token_failure_detail_names_the_cause(live_server: LiveServer, token: Callable[[], str],
                                                    detail: str) -> None:
    async with live_server.http() as client:  # the token made now: a test runs minutes after collection
        reply = await client.post("/api/rooms/lobby/messages", content=b"hi", headers=bearer(token()))
    assert reply.status_code == 401
    assert reply.json() == {"error": "unauthorized", "detail": detail}


# -- 8. secrets in log lines --------------------------------------------------------------


async def test_access_log_percent_encoded_token_never_logged() -> None:
    secret = "SECRET-" + os.urandom(6).hex()
    async with logged_server() as (server, log), server.http() as client:
        valid = server.token("alice")
        log.clear()
        reply = await client.get(f"/api/rooms/lobby/messages?%74oken={valid}&room=x")
        assert reply.status_code == 200  # the app does read %74oken as its token parameter
        refused = await client.get(f"/sse/chat?room=x&%74oken={secret}",
                                   headers={"Referer": f"https://app.example/?T%4FKEN={secret}"})
        assert refused.status_code == 401
        health = await client.get(f"/healthz?api%5Fkey={secret}&t%69cket={secret}")
        assert health.status_code == 200
        await log.until(lambda: len(log.access_lines()) >= 3)
    assert secret not in log.text and valid not in log.text
    assert log.text.count("=[redacted]") >= 5, log.text
