"""Real clients for end-to-end tests: a WebSocket that reads JSON, an SSE reader off the wire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response

TIMEOUT_S = 5.0


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return json.loads(await ws.recv())  # type: ignore[no-any-return]


async def recv_until(ws: ClientConnection, kind: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """Skips frames until one of type ``kind`` arrives (e.g. past join/leave)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("type") == kind:
                return frame  # type: ignore[no-any-return]


@asynccontextmanager
async def ws_connect(url: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    async with asyncio.timeout(TIMEOUT_S):
        ws = await connect(url, **kwargs)
    try:
        yield ws
    finally:
        async with asyncio.timeout(TIMEOUT_S):
            await ws.close()


@dataclass
class SSEEvent:
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> dict[str, Any]:
        return json.loads(self.data)  # type: ignore[no-any-return]


class SSEStream:
    """Parses text/event-stream as it arrives; comments are counted, not returned.

    A background task reads the lines, so a timed-out ``next()`` loses nothing and
    leaves the stream usable (cancelling ``aiter_lines()`` itself would close it).
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments = 0
        self.raw: list[str] = []
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for line in self.response.aiter_lines():
                self._lines.put_nowait(line)
        except httpx.HTTPError:
            pass  # the connection dropped: that is an end of stream too
        finally:
            self._lines.put_nowait(None)

    async def aclose(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.response.aclose()

    async def next(self, timeout: float = TIMEOUT_S) -> SSEEvent | None:
        """The next event, or None when the server ended the stream."""
        event: dict[str, Any] = {}
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while (line := await self._lines.get()) is not None:
                self.raw.append(line)
                if line == "":
                    if data:
                        return SSEEvent("\n".join(data), event.get("id"), event.get("retry"))
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "id":
                    event["id"] = value
                elif name == "retry":
                    event["retry"] = int(value)
            self._lines.put_nowait(None)  # stay ended for later calls
            return None

    async def next_json(self, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        event = await self.next(timeout)
        assert event is not None, "the stream ended"
        return event.json()

    async def until(self, kind: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.next_json(timeout)
                if frame.get("type") == kind:
                    return frame


@asynccontextmanager
async def sse_connect(client: httpx.AsyncClient, path: str, *,
                      headers: dict[str, str] | None = None) -> AsyncIterator[SSEStream]:
    async with asyncio.timeout(TIMEOUT_S):
        request = client.build_request("GET", path, headers=headers, timeout=None)
        response = await client.send(request, stream=True)
    stream = SSEStream(response)
    try:
        yield stream
    finally:
        await stream.aclose()


# -- helpers added for the e2e suite ------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ws_rejected(url: str, **kwargs: Any) -> Response:
    """The HTTP response of a WebSocket handshake the server refused before upgrading."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            ws = await connect(url, **kwargs)
    except InvalidStatus as exc:
        return exc.response
    async with asyncio.timeout(TIMEOUT_S):
        await ws.close()
    raise AssertionError(f"the WebSocket {url} was accepted")


def body_json(response: Response) -> Any:
    return json.loads(response.body or b"null")


async def recv_close(ws: ClientConnection, timeout: float = TIMEOUT_S) -> tuple[int | None, str | None]:
    """Reads (and drops) frames until the server closes; the close code and reason."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    return ws.close_code, ws.close_reason


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT_S) -> None:
    """Polls server-side state (presence, health) until ``condition`` holds, within ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.02)


async def next_line(stream: SSEStream, timeout: float = TIMEOUT_S) -> str | None:
    """One raw line off the SSE wire (recorded in ``stream.raw``); None when it ended."""
    async with asyncio.timeout(timeout):
        line = await stream._lines.get()
    if line is None:
        stream._lines.put_nowait(None)  # stay ended for later calls
        return None
    stream.raw.append(line)
    return line


async def run_curl(*args: str, timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    """Runs curl to completion within ``timeout``: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--noproxy", "*", "--max-time", str(timeout), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout + 2):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, stdout, stderr


@dataclass
class CurlStream:
    """A running ``curl -N`` whose stdout is read line by line, each read bounded."""

    proc: asyncio.subprocess.Process

    async def line(self, timeout: float = TIMEOUT_S) -> str | None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            raw = await self.proc.stdout.readline()
        return raw.decode().rstrip("\r\n") if raw else None

    async def until_data(self, kind: str, timeout: float = TIMEOUT_S) -> tuple[str | None, dict[str, Any]]:
        """Reads lines until a ``data:`` line of type ``kind``: (the id line before it, the JSON)."""
        last_id: str | None = None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.line(timeout)
                assert line is not None, "curl's stream ended"
                if line.startswith("id:"):
                    last_id = line[3:].strip()
                elif line.startswith("data:"):
                    frame = json.loads(line[5:])
                    if frame.get("type") == kind:
                        return last_id, frame
                elif line == "":
                    last_id = None


@asynccontextmanager
async def curl_stream(*args: str, max_time: float = 20.0) -> AsyncIterator[CurlStream]:
    """``curl -N`` as a subprocess; killed and reaped on exit."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--noproxy", "*", "-N", "--max-time", str(max_time), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield CurlStream(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        async with asyncio.timeout(TIMEOUT_S):
            await proc.wait()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def read_metrics(client: httpx.AsyncClient, **headers: str) -> Samples:
    """One scrape of /metrics, parsed: {(name, sorted labels): value}."""
    reply = await client.get("/metrics", headers=headers)
    assert reply.status_code == 200, reply.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def sample(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when it was never set (a counter nobody moved has no labelled line)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def metric_reaches(client: httpx.AsyncClient, name: str, wanted: Callable[[float], bool],
                         timeout: float = 10.0, **labels: str) -> float:
    """Scrapes until ``name{labels}`` satisfies ``wanted`` (gauges are synced every second)."""
    async with asyncio.timeout(timeout):
        while True:
            value = sample(await read_metrics(client), name, **labels)
            if wanted(value):
                return value
            await asyncio.sleep(0.1)
