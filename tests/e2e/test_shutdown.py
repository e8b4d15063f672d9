"""Graceful shutdown of the real command lines (API.md: Keep-alive and shutdown), and its logs.

Each test runs against plain `hypercorn` and against `python -m app serve` (the Procfile's
command), both a supervisor and one spawned worker in their own process group. Heroku
sends SIGTERM to every process of the dyno (the whole group); `docker stop` and systemd
signal the main process alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.serve import LISTEN_BACKLOG
from tests.conftest import SECRET, make_token
from tests.e2e.clients import recv_json, sse_connect, ws_connect

ROOT = Path(__file__).resolve().parents[2]
HYPERCORN = str(Path(sys.executable).with_name("hypercorn"))
SOMAXCONN = int(Path("/proc/sys/net/core/somaxconn").read_text())  # the kernel's cap on a backlog


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["hypercorn", "serve"])
async def hypercorn_process(
        request: pytest.FixtureRequest) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """The server as a command line: plain Hypercorn, or ``python -m app serve`` (the Procfile's)."""
    port = free_port()
    command = [HYPERCORN, "--bind", f"127.0.0.1:{port}", "--worker-class", "uvloop",
               "--access-logfile", "-", "app:create_app()"] if request.param == "hypercorn" else \
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k not in ("WEB_CONCURRENCY", "REDIS_URL", "PORT")}
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env={**env, "JWT_SECRET": SECRET},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client, asyncio.timeout(20):
        while True:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    try:
        yield process, port
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def test_sigterm_to_the_group_closes_1012_ends_sse_and_exits(
    hypercorn_process: tuple[asyncio.subprocess.Process, int],
) -> None:
    process, port = hypercorn_process
    token = make_token("alice")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client, \
            ws_connect(f"ws://127.0.0.1:{port}/ws/chat?room=lobby&token={token}") as ws, \
            sse_connect(client, f"/sse/chat?room=lobby&token={token}") as sse:
        assert (await recv_json(ws))["type"] == "welcome"
        assert (await sse.next_json())["type"] == "welcome"
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        async with asyncio.timeout(10):
            await ws.wait_closed()
        assert ws.close_code == 1012
        while await sse.next(timeout=10) is not None:
            pass  # whatever was in flight, then the end of the stream
        assert any(line.startswith("retry:") for line in sse.raw[-4:])  # the jittered hint
        async with asyncio.timeout(25):
            await process.wait()
        assert time.monotonic() - started < 25
        output = (await process.stdout.read()).decode() if process.stdout else ""
    assert process.returncode == 0, output
    # The token was in two URLs: it appears in no log line, access log included.
    assert token not in output
    assert "/sse/chat" in output or "/ws/chat" in output  # the access log did log the requests


async def test_sigterm_to_the_supervisor_alone_drains_answers_what_it_read_no_traceback(
    hypercorn_process: tuple[asyncio.subprocess.Process, int],
) -> None:
    # docker stop and systemd signal the main process only: Hypercorn's supervisor, whose
    # worker then shuts down without any signal of its own reaching the app.
    process, port = hypercorn_process
    token = make_token("alice")
    answered: list[int] = []
    stop, warmed_up = asyncio.Event(), asyncio.Event()

    async def poster(client: httpx.AsyncClient, n: int) -> None:
        headers = {"Authorization": f"Bearer {make_token(f'poster{n}')}"}
        while not stop.is_set():
            try:
                reply = await client.post("/api/rooms/load/messages", json={"text": "x"}, headers=headers)
                answered.append(reply.status_code)
                if len(answered) >= 100:
                    warmed_up.set()
            except httpx.TransportError:  # refused or reset once the listener is closed
                await asyncio.sleep(0.02)

    base, pool = f"http://127.0.0.1:{port}", httpx.Limits(max_connections=50)
    # The stream and the POSTs on clients of their own: a pooled connection is never both.
    async with httpx.AsyncClient(base_url=base, timeout=10, limits=pool) as client, \
            httpx.AsyncClient(base_url=base, timeout=10) as streaming, \
            ws_connect(f"ws://127.0.0.1:{port}/ws/chat?room=lobby&token={token}") as ws, \
            ws_connect(f"ws://127.0.0.1:{port}/ws/echo") as echo, \
            sse_connect(streaming, f"/sse/chat?room=lobby&token={token}") as sse:
        assert (await recv_json(ws))["type"] == "welcome"
        assert (await sse.next_json())["type"] == "welcome"
        posters = [asyncio.create_task(poster(client, n)) for n in range(50)]
        async with asyncio.timeout(10):
            await warmed_up.wait()
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # the supervisor only, not its group
        async with asyncio.timeout(10):
            await ws.wait_closed()
            await echo.wait_closed()
        assert (ws.close_code, echo.close_code) == (1012, 1012)
        while await sse.next(timeout=10) is not None:
            pass
        assert any(line.startswith("retry:") for line in sse.raw[-4:])
        async with asyncio.timeout(25):
            await process.wait()
        elapsed = time.monotonic() - started
        stop.set()
        async with asyncio.timeout(15):
            await asyncio.gather(*posters)
        output = (await process.stdout.read()).decode() if process.stdout else ""
    assert process.returncode == 0, output
    assert elapsed < 5, output  # drained at once, not cut at Hypercorn's graceful timeout
    assert "Traceback" not in output and "Task was destroyed" not in output, output
    # Every POST the server answered reached its client: the access log and the client
    # agree. Left to clients (docs/api.md): connections the kernel had queued are reset when
    # the listener closes, and a request that arrives on an idle keep-alive connection as
    # Hypercorn closes it is cut, logged with status "-" (a race of a few microseconds).
    logged = [line for line in output.splitlines() if "POST /api/rooms/load/messages" in line]
    cut = [line for line in logged if '1.1" - -' in line]
    assert len(logged) - len(cut) == len(answered), [line for line in logged if " 202 " not in line][:5]
    assert len(cut) <= 5, cut
    assert set(answered) <= {202, 429}


async def test_command_line_token_is_accepted_by_the_server(
    hypercorn_process: tuple[asyncio.subprocess.Process, int],
) -> None:
    _, port = hypercorn_process
    made = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "token", "ops", "--scope", "notify", "--ttl", "60",
        cwd=ROOT, env={**os.environ, "JWT_SECRET": SECRET}, stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, _ = await made.communicate()
    assert made.returncode == 0
    token = out.decode().strip()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        reply = await client.post("/api/notifications", json={"broadcast": True, "data": {"m": 1}},
                                  headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 202, reply.text


async def test_serve_listen_backlog_queues_a_reconnect_storm_in_the_kernel(
    hypercorn_process: tuple[asyncio.subprocess.Process, int], request: pytest.FixtureRequest,
) -> None:
    """`python -m app serve` listens with a backlog of 1024 (Hypercorn's own default: 100), so
    thousands of clients reconnecting at once wait in the accept queue instead of having
    their SYNs dropped. `ss` shows a listening socket's backlog as its Send-Q."""
    _, port = hypercorn_process
    listing = await asyncio.create_subprocess_exec(
        "ss", "-Hltn", f"sport = :{port}", stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(10):
        out, _ = await listing.communicate()
    backlogs = {int(line.split()[2]) for line in out.decode().splitlines() if line.startswith("LISTEN")}
    expected = LISTEN_BACKLOG if request.node.callspec.params["hypercorn_process"] == "serve" else 100
    assert backlogs == {min(expected, SOMAXCONN)}
