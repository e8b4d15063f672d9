"""Real clients for end-to-end tests: a WebSocket that reads JSON, an SSE reader off the wire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

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


@dataclass
class SSEStream:
    """Parses text/event-stream as it arrives; comments are counted, not returned."""

    response: httpx.Response
    lines: AsyncIterator[str]
    comments: int = 0
    raw: list[str] = field(default_factory=list)

    async def next(self, timeout: float = TIMEOUT_S) -> SSEEvent | None:
        """The next event, or None when the server ended the stream."""
        event: dict[str, Any] = {}
        data: list[str] = []
        async with asyncio.timeout(timeout):
            async for line in self.lines:
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
    try:
        yield SSEStream(response, response.aiter_lines())
    finally:
        await response.aclose()
