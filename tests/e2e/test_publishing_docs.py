"""docs/publishing.md cannot drift: every curl line in its shell blocks runs against a live
server, with $HUB and $API_KEY set as the page says, and must be answered 2xx."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from tests.conftest import ServerFactory

DOC = Path(__file__).resolve().parents[2] / "docs" / "publishing.md"
API_KEY = "docs-secret-0123456789abcdef0123456789"


def curl_lines() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


async def test_every_curl_line_of_the_publishing_guide_works(server_factory: ServerFactory) -> None:
    lines = curl_lines()
    assert len(lines) >= 7  # the page's examples, all of them
    server = await server_factory({"API_KEYS": f"docs:{API_KEY}"})
    env = {**os.environ, "HUB": server.url, "API_KEY": API_KEY}
    for line in lines:
        checked = f"{line} -sS --max-time 10 --output /dev/null --write-out '%{{http_code}}'"
        process = await asyncio.create_subprocess_exec(
            "bash", "-c", checked, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(20):
            out, err = await process.communicate()
        status = out.decode()
        assert process.returncode == 0 and status.startswith("2"), (line, status, err.decode())
