"""The shortest path through the stack, and the one version string."""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys
from pathlib import Path

import hubbub
from tests.conftest import LiveServer
from tests.e2e.clients import recv_json, recv_until, sse_connect, ws_connect

ROOT = Path(__file__).resolve().parents[2]


async def test_post_reaches_websocket_and_sse_with_the_same_id(live_server: LiveServer) -> None:
    token = live_server.token("alice")
    async with live_server.http() as client, \
            ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as ws, \
            sse_connect(client, f"/sse/chat?room=lobby&token={token}") as sse:
        assert (await recv_json(ws))["type"] == "welcome"
        assert (await sse.next_json())["type"] == "welcome"
        reply = await client.post("/api/rooms/lobby/messages", content=b"hi",
                                  headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 202
        message_id = reply.json()["id"]
        assert (await recv_until(ws, "chat"))["id"] == message_id
        assert (await sse.until("chat"))["id"] == message_id


async def test_one_version_in_the_package_the_command_line_and_healthz(live_server: LiveServer) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "--version", cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        out, _ = await process.communicate()
    assert out.decode().strip() == f"hubbub {hubbub.__version__}"
    async with live_server.http() as client:
        assert (await client.get("/healthz")).json()["version"] == hubbub.__version__
    assert importlib.metadata.version("hubbub") == hubbub.__version__  # pyproject reads it too
