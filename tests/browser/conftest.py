"""Real headless Chromium (Debian's, driven by Playwright) against a real server in the same loop.

Browser and server share the test's event loop: the page talks to Hypercorn over real
sockets while Playwright's driver runs in its own process, so nothing here may block
the loop (no time.sleep, no subprocess.run: the server would stop answering).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import playwright.async_api as playwright_api
import pytest

from app import create_app
from hubbub.config import Settings
from tests.conftest import SECRET, LiveServer, ServerFactory, make_token, serve_app

CHROMIUM = os.environ.get("HUBBUB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
# Demo login on; a rate limit that no test's burst of messages runs into.
DEMO_ENV = {"DEMO_LOGIN": "1", "RATE_LIMIT_BURST": "200", "RATE_LIMIT_PER_SECOND": "100"}
EXPECT_MS = 5_000  # a DOM condition that needs no reconnection
RECONNECT_MS = 20_000  # one that waits out a reconnect backoff (1012: first delay up to 5 s)


@pytest.fixture
async def demo_server(server_factory: ServerFactory) -> LiveServer:
    return await server_factory(DEMO_ENV)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    async with playwright_api.async_playwright() as pw:
        async with asyncio.timeout(30):
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            async with asyncio.timeout(15):
                await browser.close()


@dataclass
class Pages:
    """Opens demo pages, each in its own browser context (its own cookies and storage)."""

    browser: Any
    contexts: list[Any] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    async def open(self, server: LiveServer | str, user: str | None, *, room: str | None = None,
                   transport: str | None = None, hash_room: str | None = None,
                   viewport: tuple[int, int] = (1280, 800), init_script: str | None = None,
                   wait_open: bool = True, setup: Callable[[Any], Awaitable[None]] | None = None) -> Any:
        base = server if isinstance(server, str) else server.url
        context = await self.browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        self.contexts.append(context)
        context.set_default_timeout(EXPECT_MS)
        if init_script:
            await context.add_init_script(init_script)
        page = await context.new_page()
        page.on("pageerror", lambda error: self.page_errors.append(f"{user}: {error}"))
        if setup is not None:
            await setup(page)
        query = {k: v for k, v in {"user": user, "room": room, "transport": transport}.items() if v}
        url = f"{base}/?{httpx.QueryParams(query)}" + (f"#{hash_room}" if hash_room else "")
        await page.goto(url)
        if wait_open and user:
            await playwright_api.expect(page.locator("#state")).to_have_text("open", timeout=EXPECT_MS)
        return page

    async def close(self) -> None:
        async with asyncio.timeout(15):
            for context in self.contexts:
                await context.close()


@pytest.fixture
async def pages(browser: Any) -> AsyncIterator[Pages]:
    opened = Pages(browser)
    try:
        yield opened
    finally:
        await opened.close()
    assert not opened.page_errors, f"uncaught errors in the page: {opened.page_errors}"


# -- helpers ---------------------------------------------------------------------


def chat_items(page: Any) -> Any:
    return page.locator("#messages li[data-type=chat]")


def chat_texts(page: Any) -> Any:
    return page.locator("#messages li[data-type=chat] .text")


async def send(page: Any, text: str, *, acked: bool = True) -> None:
    """Types into the composer and presses Enter, as a user would; then, unless told not to,
    waits for the hub's ack (the pending bubble goes), so what a test sends next comes after it."""
    await page.locator("#text").fill(text)
    await page.locator("#text").press("Enter")
    if acked:
        await playwright_api.expect(page.locator("#outbox li")).to_have_count(0, timeout=EXPECT_MS)


async def demo_log(page: Any) -> dict[str, Any]:
    return await page.evaluate("() => JSON.parse(JSON.stringify(window.demo.log))")  # type: ignore[no-any-return]


async def post_chat(server: LiveServer | str, user: str, room: str, text: str) -> str:
    base = server if isinstance(server, str) else server.url
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        reply = await client.post(f"/api/rooms/{room}/messages", json={"text": text},
                                  headers={"Authorization": f"Bearer {make_token(user)}"})
    assert reply.status_code == 202, reply.text
    return str(reply.json()["id"])


async def notify(server: LiveServer | str, body: dict[str, Any]) -> str:
    base = server if isinstance(server, str) else server.url
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        reply = await client.post("/api/notifications", json=body,
                                  headers={"Authorization": f"Bearer {make_token('ops', scope='notify')}"})
    assert reply.status_code == 202, reply.text
    return str(reply.json()["id"])


async def assert_no_duplicates(page: Any) -> None:
    log = await demo_log(page)
    assert log["duplicates"] == [], f"the client emitted these ids more than once: {log['duplicates']}"


# -- a server that can be stopped and started again on the same port ---------------


@dataclass
class Restartable:
    server: LiveServer
    app: Any

    def drain(self) -> None:
        """What SIGTERM does first: refuse new connections, close WebSockets 1012, end SSE."""
        self.app.extensions["hubbub.instance"].drain()


@asynccontextmanager
async def serve_on(port: int = 0, env: dict[str, str] | None = None, *,
                   secret: bool = True) -> AsyncIterator[Restartable]:
    """Like tests.conftest.run_server, on a chosen port: SO_REUSEADDR lets a successor bind it at once.

    ``secret=False``: no JWT_SECRET, as `make run` serves: an ephemeral secret of its own."""
    settings = Settings.from_env({**({"JWT_SECRET": SECRET} if secret else {}), **DEMO_ENV, **(env or {})})
    app = create_app(settings, handle_signals=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    async with serve_app(app, settings, sock) as server:
        yield Restartable(server, app)


def short_token_route(ttl_s: float, calls: list[dict[str, Any]]) -> Callable[[Any], Awaitable[None]]:
    """A page.route handler for /auth/demo-token that signs tokens living ``ttl_s`` seconds."""

    async def handle(route: Any) -> None:
        body = json.loads(route.request.post_data or "{}")
        calls.append(body)
        user, scope = str(body.get("user", "")), str(body.get("scope", ""))
        ttl = 3600 if scope else ttl_s
        token = make_token(user, scope=scope, ttl_s=ttl)
        await route.fulfill(status=200, content_type="application/json",
                            body=json.dumps({"token": token, "expires_in": ttl}))

    return handle


# -- a network path that goes silent without closing --------------------------------


class SilentProxy:
    """A TCP proxy in front of a server. ``silence()`` makes every connection through it go
    quiet both ways without closing (what a NAT that dropped its flows, or a hung proxy, does
    to a browser); connections opened afterwards go through as before."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._listener: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.sockets[0].getsockname()[1]}" if self._listener else ""

    async def __aenter__(self) -> SilentProxy:
        self._listener = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._listener is not None
        self._listener.close()
        self.silence()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def silence(self) -> None:
        """Every open connection stops carrying bytes, in both directions, and stays open."""
        for pipe in self._pipes:
            pipe.cancel()
        self._pipes.clear()

    async def _connect(self, client_reader: asyncio.StreamReader,
                       client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [client_writer, server_writer]
        for source, sink in ((client_reader, server_writer), (server_reader, client_writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        sink.close()
