"""Shared fixtures: a real Hypercorn serving the app on a free port, and tokens for it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import uuid4

import httpx
import jwt
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

from app import create_app
from hubbub.config import Settings
from hubbub.hub.hub import Hub

if TYPE_CHECKING:
    from tests.backends.conftest import RedisServer

SECRET = "test-secret-that-is-long-enough-for-hs256"


def make_token(user: str, *, scope: str = "", ttl_s: float = 3600,
               rooms: list[str] | None = None, secret: str = SECRET) -> str:
    import time

    claims: dict[str, object] = {"sub": user, "exp": int(time.time() + ttl_s)}
    if scope:
        claims["scope"] = scope
    if rooms is not None:
        claims["rooms"] = rooms
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass
class LiveServer:
    port: int
    hub: Hub
    settings: Settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def token(self, user: str, **claims: object) -> str:
        return make_token(user, **claims)  # type: ignore[arg-type]

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)


@asynccontextmanager
async def run_server(env: dict[str, str] | None = None,
                     app_config: dict[str, object] | None = None) -> AsyncIterator[LiveServer]:
    """Hypercorn on a port the kernel picked, bound before serving so no test races for it."""
    settings = Settings.from_env({"JWT_SECRET": SECRET, **(env or {})})
    app = create_app(settings, handle_signals=False)
    app.config.update(app_config or {})
    async with serve_app(app, settings, socket.create_server(("127.0.0.1", 0))) as server:
        yield server


@asynccontextmanager
async def serve_app(app: Quart, settings: Settings, sock: socket.socket) -> AsyncIterator[LiveServer]:
    """Serves ``app`` with Hypercorn on the bound ``sock`` until the block ends."""
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.graceful_timeout = 2
    config.accesslog = None
    config.errorlog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    server = LiveServer(port=port, hub=app.extensions["hubbub"]["hubbub"].hub, settings=settings)
    async with server.http() as client, asyncio.timeout(10):
        while True:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


ServerFactory = Callable[..., Awaitable[LiveServer]]


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own on the shared Redis, emptied afterwards."""
    from tests.backends.conftest import delete_keys

    prefix = f"test:{uuid4().hex}:"
    yield prefix
    await delete_keys(prefix)


@pytest.fixture
async def private_redis() -> AsyncIterator[RedisServer]:
    """A redis-server of the test's own on a free port, to stop and start at will."""
    from tests.backends.conftest import RedisServer

    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def live_server() -> AsyncIterator[LiveServer]:
    async with run_server() as server:
        yield server


@pytest.fixture
async def server_factory() -> AsyncIterator[Callable[[dict[str, str]], Awaitable[LiveServer]]]:
    """Starts servers with their own environment: ``await server_factory({"OUTBOX_SIZE": "5"})``."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        async def start(env: dict[str, str] | None = None,
                        app_config: dict[str, object] | None = None) -> LiveServer:
            return await stack.enter_async_context(run_server(env, app_config))

        yield start
