"""examples/embedded served as its README says (``python -m app`` in its folder), for the e2e
and browser tests: its own ``app`` package, hubbub at /rt, on a socket the test bound first."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "embedded"


@dataclass
class Example:
    process: asyncio.subprocess.Process
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@asynccontextmanager
async def example_server(db: Path) -> AsyncIterator[Example]:
    sock = socket.create_server(("127.0.0.1", 0))
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JWT_SECRET", "PYTHONPATH")}
    env.update({"BIND": f"fd://{sock.fileno()}", "CHAT_DB": str(db), "PYTHONUNBUFFERED": "1"})
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app", cwd=EXAMPLE, env=env, pass_fds=(sock.fileno(),),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        example = Example(process, sock.getsockname()[1])
    finally:
        sock.close()

    async def read() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            example.lines.append(line.decode(errors="replace").rstrip("\n"))

    reader = asyncio.create_task(read())
    try:
        async with httpx.AsyncClient(base_url=example.url) as client, asyncio.timeout(20):
            while True:
                assert process.returncode is None, example.output
                try:
                    if (await client.get("/rt/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        yield example
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            await process.wait()
        async with asyncio.timeout(5):
            await reader
