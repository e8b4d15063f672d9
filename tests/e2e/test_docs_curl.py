"""Documentation cannot drift: every curl command in the code blocks of README.md and
docs/*.md runs against a live server, in the order its page gives them, and each one
must be answered 2xx.

Each page runs as one bash script of its curl commands (and the variables they set, such
as ``TOKEN=$(curl …)``), with the page's hosts pointed at the server and ``curl`` wrapped
to note every status. A stream (``curl -N``) is cut after two seconds: it only has to
have been answered 200."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from tests.conftest import ServerFactory, make_token

ROOT = Path(__file__).resolve().parents[2]
PAGES = {path.name: path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
API_KEY = "docs-secret-0123456789abcdef0123456789"
DOC_HOSTS = ("https://my-hubbub.herokuapp.com", "http://localhost:8000", "localhost:8000")

# Notes each call's status on stderr; streams get a short --max-time.
WRAPPER = r"""
curl() {
  local limit=10 code=0
  for arg in "$@"; do [ "$arg" = "-N" ] && limit=2; done
  command curl --max-time "$limit" "$@" \
    --write-out '%{stderr}\nCURL-STATUS %{http_code} %{url_effective}\n' || code=$?
  [ "$code" = 28 ] && [ "$limit" = 2 ] && return 0  # a stream cut on purpose
  return "$code"
}
"""


def code_blocks(text: str) -> list[str]:
    """Fenced blocks, and the four-space indented blocks that deploy.md uses."""
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)
    unfenced = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    indented = re.findall(r"(?:^ {4,}\S.*\n)+", unfenced, flags=re.M)
    return fenced + indented


def curl_commands(text: str) -> list[str]:
    """Every command that calls curl (continuation lines joined), in page order."""
    commands = []
    for block in code_blocks(text):
        lines = iter(block.splitlines())
        for line in lines:
            command = line.strip()
            if not re.match(r"(curl |[A-Z_]+=\$\(curl )", command):
                continue
            while command.endswith("\\"):
                command = command[:-1] + " " + next(lines).strip()
            commands.append(command)
    return commands


def pointed_at(command: str, url: str) -> str:
    for host in DOC_HOSTS:
        command = command.replace(host, url)
    return command


@pytest.mark.parametrize("page", PAGES)
async def test_every_curl_example_is_answered_2xx(page: str, server_factory: ServerFactory) -> None:
    commands = curl_commands(PAGES[page])
    if not commands:
        assert "curl " not in PAGES[page].replace("`curl ", ""), "a curl example outside a code block"
        return
    server = await server_factory({"API_KEYS": f"docs:{API_KEY}", "DEMO_LOGIN": "1"})
    script = WRAPPER + "\n".join(pointed_at(command, server.url) for command in commands) + "\nwait\n"
    env = {**os.environ, "HUB": server.url, "API_KEY": API_KEY,
           "TOKEN": make_token("alice"), "NOTIFY": make_token("ops", scope="notify")}
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", f"set -e\n{script}", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    calls = re.findall(r"CURL-STATUS (\d{3}) (\S+)", err.decode())
    assert process.returncode == 0, (page, err.decode()[-2000:], calls)
    assert len(calls) == sum(command.count("curl ") for command in commands), calls
    refused = [(status, url) for status, url in calls if not status.startswith("2")]
    assert not refused, (page, refused)
