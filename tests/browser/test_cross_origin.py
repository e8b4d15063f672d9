"""The browser client on a page of another origin (ALLOWED_ORIGINS): Chromium enforces
CORS, preflights included, on the SSE stream and on the POSTs that carry an Idempotency-Key."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.browser.conftest import DEMO_ENV, EXPECT_MS
from tests.conftest import ServerFactory, make_token

pytestmark = pytest.mark.browser

SEND_ACROSS = """async ({ base, token }) => {
  const { Hubbub } = await import("/static/hubbub.js");
  const hub = new Hubbub({ channel: { room: "lobby" }, baseUrl: base, getToken: () => token,
                           transport: "sse" });
  const got = new Promise((resolve) => hub.addEventListener(
    "message", (e) => e.detail.type === "chat" && resolve(e.detail)));
  await new Promise((resolve) => {
    hub.addEventListener("state", (e) => e.detail.state === "open" && resolve());
    hub.connect();
  });
  const ack = await hub.send("across origins");
  const message = await got;
  hub.close();
  return { origin: location.origin, ack: ack.id, id: message.id, text: message.text };
}"""


async def test_a_page_of_another_origin_streams_and_posts(server_factory: ServerFactory,
                                                           browser: Any) -> None:
    server = await server_factory({**DEMO_ENV, "ALLOWED_ORIGINS": "*"})
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{server.url}/healthz")  # the page's origin: 127.0.0.1
        base = f"http://localhost:{server.port}"  # the hub's, for the browser: another origin
        async with asyncio.timeout(2 * EXPECT_MS / 1000):
            got = await page.evaluate(SEND_ACROSS, {"base": base, "token": make_token("alice")})
        assert got["origin"] != base
        assert got["ack"] == got["id"] and got["text"] == "across origins"
    finally:
        await context.close()
