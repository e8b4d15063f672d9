"""Backends for the contract suite: every test runs on MemoryBackend and on the real Redis.

Redis tests get a unique key prefix, removed afterwards, so they can share a Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hubbub.hub.backends.base import Backend
from hubbub.hub.backends.memory import MemoryBackend
from hubbub.hub.backends.redis import RedisBackend
from hubbub.hub.message import Message

REDIS_URL = "redis://127.0.0.1:6379/0"

MakeBackend = Callable[..., Backend]
T = TypeVar("T")


async def poll(check: Callable[[], Awaitable[T]], timeout: float, interval: float = 0.02) -> T:
    """Awaits ``check`` until its result is truthy: for what no event announces (expiry, time)."""
    async with asyncio.timeout(timeout):
        while True:
            if result := await check():
                return result
            await asyncio.sleep(interval)


class Inbox:
    """A ``deliver`` callback that records messages and lets a test wait for them."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._arrived = asyncio.Event()

    def __call__(self, message: Message) -> None:
        self.messages.append(message)
        self._arrived.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Message]:
        """The first ``count`` messages, once they are there."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages[:count]


async def delete_keys(prefix: str, url: str = REDIS_URL) -> None:
    """Removes every key under ``prefix`` (each test has its own)."""
    client = aioredis.from_url(url)
    try:
        async with asyncio.timeout(10):
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the shared Redis, to look at what a test left there."""
    made = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield made
    await made.aclose()


@pytest.fixture
async def make_redis(redis_prefix: str) -> AsyncIterator[Callable[..., RedisBackend]]:
    """Makes RedisBackends sharing one prefix: several "processes" of one app."""
    made: list[RedisBackend] = []

    def make(url: str = REDIS_URL, **kwargs: Any) -> RedisBackend:
        made.append(RedisBackend(url, prefix=redis_prefix, **kwargs))
        return made[-1]

    yield make
    async with asyncio.timeout(10):
        for backend in made:
            await backend.close()


@pytest.fixture
async def make_memory() -> AsyncIterator[Callable[..., MemoryBackend]]:
    """Makes MemoryBackends, closed afterwards (a started one runs its sweep)."""
    made: list[MemoryBackend] = []

    def make(**kwargs: Any) -> MemoryBackend:
        made.append(MemoryBackend(**kwargs))
        return made[-1]

    yield make
    async with asyncio.timeout(10):
        for backend in made:
            await backend.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_backend(request: pytest.FixtureRequest) -> MakeBackend:
    """Makes (unstarted) backends of the parametrized kind, closed after the test."""
    maker: MakeBackend = request.getfixturevalue(f"make_{request.param}")
    return maker


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
async def backend(make_backend: MakeBackend, inbox: Inbox) -> Backend:
    """A started backend of each kind, delivering to ``inbox``."""
    made = make_backend()
    async with asyncio.timeout(5):
        await made.start(inbox)
    return made


class RedisServer:
    """A private redis-server on a free port that a test may stop and start again.

    With ``tls_dir``: TLS only, with a self-signed certificate, as Heroku Redis has.
    """

    def __init__(self, tls_dir: Path | None = None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._tls_dir = tls_dir
        self.url = f"{'rediss' if tls_dir else 'redis'}://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        listen = ["--port", str(self.port)]
        if self._tls_dir is not None:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                      "--tls-cert-file", str(self._tls_dir / "cert.pem"),
                      "--tls-key-file", str(self._tls_dir / "key.pem")]
        self._process = await asyncio.create_subprocess_exec(
            "redis-server", *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await poll(self._answers, timeout=10)  # no event tells when it listens

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            async with asyncio.timeout(10):
                await self._process.wait()
        self._process = None

    async def _answers(self) -> bool:
        context = None
        if self._tls_dir is not None:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=context)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            return await reader.readline() == b"+PONG\r\n"
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def write_self_signed_certificate(directory: Path) -> None:
    """cert.pem and key.pem for 127.0.0.1, signed by nobody a client would trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hubbub-test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


@pytest.fixture
async def tls_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    write_self_signed_certificate(tmp_path)
    server = RedisServer(tls_dir=tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
