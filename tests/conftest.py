"""Shared fixtures: a real Hypercorn serving the app on a free port, and tokens for it."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
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
    tls: ssl.SSLContext | None = None  # a client context trusting the server's certificate
    services: Any = None  # the app's hubbub Services (drain(), limits, metrics)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    def token(self, user: str, **claims: object) -> str:
        return make_token(user, **claims)  # type: ignore[arg-type]

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, verify=self.tls or True, **kwargs)


@asynccontextmanager
async def run_server(env: dict[str, str] | None = None, app_config: dict[str, object] | None = None,
                     *, tls: Path | None = None) -> AsyncIterator[LiveServer]:
    """Hypercorn on a port the kernel picked, bound before serving so no test races for it.

    ``tls``: a folder with cert.pem and key.pem (write_certificate): HTTPS, HTTP/2 by ALPN."""
    settings = Settings.from_env({"JWT_SECRET": SECRET, **(env or {})})
    app = create_app(settings, handle_signals=False)
    app.config.update(app_config or {})
    async with serve_app(app, settings, socket.create_server(("127.0.0.1", 0)), tls=tls) as server:
        yield server


def write_certificate(directory: Path) -> ssl.SSLContext:
    """cert.pem and key.pem for 127.0.0.1 (self-signed); a client context that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ssl.create_default_context(cafile=str(directory / "cert.pem"))


@asynccontextmanager
async def serve_app(app: Quart, settings: Settings, sock: socket.socket, *,
                    tls: Path | None = None) -> AsyncIterator[LiveServer]:
    """Serves ``app`` with Hypercorn on the bound ``sock`` until the block ends."""
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    client_tls = None
    if tls is not None:
        config.certfile, config.keyfile = str(tls / "cert.pem"), str(tls / "key.pem")
        client_tls = ssl.create_default_context(cafile=str(tls / "cert.pem"))
    config.graceful_timeout = 2
    config.accesslog = None
    config.errorlog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    services = app.extensions["hubbub"]["hubbub"]
    server = LiveServer(port=port, hub=services.hub, settings=settings, tls=client_tls, services=services)
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
