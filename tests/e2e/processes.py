"""Real `hypercorn` command lines on Redis for end-to-end tests, and clients that record frames.

Each server runs as the Procfile runs it (`hypercorn ... --worker-class uvloop 'app:create_app()'`,
optionally `--workers N`) in its own process group, on a socket the test bound first and
hands over as `fd://N`, so no test races another for a port. Its output is read all along
(a full pipe would stall the server) and kept for the test's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.conftest import SECRET
from tests.e2e.clients import SSEStream

ROOT = Path(__file__).resolve().parents[2]
HYPERCORN = str(Path(sys.executable).with_name("hypercorn"))
REDIS_URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 25.0  # what the app promises on SIGTERM (Heroku kills at 30 s)
# Inherited variables that would change what the server under test does.
_SCRUBBED = ("REDIS_URL", "REDIS_PREFIX", "WEB_CONCURRENCY", "PORT", "JWT_PUBLIC_KEY",
             "JWT_ALGORITHMS", "JWT_AUDIENCE", "JWT_ISSUER", "ALLOWED_ORIGINS", "DEMO_LOGIN")

Frame = dict[str, Any]


class Hypercorn:
    """One `hypercorn` command line (supervisor + ``workers`` spawned workers)."""

    def __init__(self, env: dict[str, str], workers: int | None = None, *,
                 worker_class: str = "uvloop", preexec: Callable[[], None] | None = None) -> None:
        self.env = env
        self.workers = workers
        self.worker_class = worker_class
        self.preexec = preexec  # run in the child before exec (resource limits)
        self.lines: list[str] = []
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self.killed = False  # by the test, on purpose
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def http(self, timeout: float = 10.0, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=timeout, **kwargs)

    async def start(self) -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        args = [HYPERCORN, "--bind", f"fd://{sock.fileno()}", "--worker-class", self.worker_class]
        if self.workers is not None:
            args += ["--workers", str(self.workers)]
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        env.update({"JWT_SECRET": SECRET, "LOG_LEVEL": "INFO", **self.env})
        try:
            self.process = await asyncio.create_subprocess_exec(
                *args, "app:create_app()", cwd=ROOT, env=env, pass_fds=(sock.fileno(),),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=self.preexec)
        finally:
            sock.close()  # the server holds its own copy
        self._reader = asyncio.create_task(self._read_output())
        try:
            await self._until_ready()
        except BaseException:
            await self.stop()
            raise

    async def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    async def _until_ready(self) -> None:
        """Every worker logged that it serves, and /healthz answers 200."""
        expected = self.workers or 1
        async with self.http(timeout=2) as client, asyncio.timeout(START_TIMEOUT_S):
            while True:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise AssertionError(f"hypercorn exited at start-up:\n{self.output}")
                if sum("hubbub ready" in line for line in self.lines) >= expected:
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL to the whole group: a crash, nothing cleaned up."""
        assert self.process is not None and self.process.returncode is None
        self.killed = True
        os.killpg(self.process.pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            await self.process.wait()

    async def stop(self) -> int | None:
        """SIGTERM to the whole group, as Heroku does; SIGKILL if it is not gone in 25 s."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._reader
        return process.returncode


@asynccontextmanager
async def hypercorn(env: dict[str, str], workers: int | None = None, *, worker_class: str = "uvloop",
                    preexec: Callable[[], None] | None = None) -> AsyncIterator[Hypercorn]:
    server = Hypercorn(env, workers, worker_class=worker_class, preexec=preexec)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Recorder:
    """Every frame one connection received, read by a background task until the connection ends.

    SSE events keep their ``id:`` line as ``"_sse_id"``. ``ended`` turns true only when the
    server closed the connection (or it dropped), never because the test stopped reading.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.frames: list[Frame] = []
        self.ended = False
        self.close_code: int | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def websocket(cls, name: str, ws: ClientConnection) -> Recorder:
        recorder = cls(name)
        recorder._task = asyncio.create_task(recorder._read_ws(ws))
        return recorder

    @classmethod
    def sse(cls, name: str, stream: SSEStream) -> Recorder:
        recorder = cls(name)
        recorder._task = asyncio.create_task(recorder._read_sse(stream))
        return recorder

    async def _read_ws(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._add(json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            self._end()

    async def _read_sse(self, stream: SSEStream) -> None:
        try:
            while (event := await stream.next(timeout=3600)) is not None:
                frame = event.json()
                if event.id is not None:
                    frame["_sse_id"] = event.id
                self._add(frame)
        finally:
            self._end()

    def _add(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._changed.set()

    def _end(self) -> None:
        self.ended = True
        self._changed.set()

    async def stop(self) -> None:
        """Stops reading (the connection itself is closed by whoever opened it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def of_type(self, kind: str) -> list[Frame]:
        return [f for f in self.frames if f.get("type") == kind]

    def chats(self) -> list[Frame]:
        return self.of_type("chat")

    async def wait_until(self, condition: Callable[[Recorder], bool], timeout: float = 10.0,
                         what: str = "") -> None:
        try:
            async with asyncio.timeout(timeout):
                while not condition(self):
                    if self.ended:
                        raise AssertionError(f"{self.name} ended (close {self.close_code}) "
                                             f"before {what or 'the condition'}: {self.frames}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{self.name}: no {what or 'condition'} within {timeout} s; "
                                 f"got {self.frames}") from None

    async def wait_for_text(self, text: str, timeout: float = 10.0) -> Frame:
        def seen(r: Recorder) -> bool:
            return any(f.get("text") == text for f in r.chats())

        await self.wait_until(seen, timeout, f"chat {text!r}")
        return next(f for f in self.chats() if f.get("text") == text)


class LossyProxy:
    """A TCP proxy to Redis that can lose a reply, as a network blip does.

    ``lose_reply_to(marker)``: the next request containing ``marker`` reaches Redis
    (and runs there), then the connection is cut before Redis's answer gets back.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self.cut = asyncio.Event()  # set once a reply was lost
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def lose_reply_to(self, marker: bytes) -> None:
        self._marker = marker

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        writers = [client_w]
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            writers.append(server_w)
            replies = asyncio.create_task(self._pump(server_r, client_w))
            try:
                while chunk := await client_r.read(65536):
                    server_w.write(chunk)
                    await server_w.drain()
                    if self._marker is not None and self._marker in chunk:
                        self._marker = None
                        self.cuts += 1
                        self.cut.set()
                        replies.cancel()  # Redis runs the command; its answer is dropped
                        await asyncio.sleep(0.2)
                        return
            finally:
                replies.cancel()
                await asyncio.gather(replies, return_exceptions=True)
        except OSError:
            pass
        finally:
            for writer in writers:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()
