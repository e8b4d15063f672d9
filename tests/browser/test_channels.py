"""One page, three channels, one connection: the browser client's subscribe() in Chromium,
over WebSocket and over SSE, with a channel added while open and a chat sent on it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.browser.conftest import EXPECT_MS
from tests.conftest import LiveServer, make_token

pytestmark = pytest.mark.browser

OPEN_THREE = """async ({ token, transport }) => {
  const { Hubbub } = await import("/static/hubbub.js");
  const hub = new Hubbub({ channels: [], getToken: () => token, transport });
  window.got = { lobby: [], ops: [], notifications: [], later: [], all: [] };
  window.hub = hub;
  // Messages with an id (join and leave have none: presence, not history).
  window.record = (key) => (e) => e.detail.id && window.got[key].push(e.detail.type + ":" + e.detail.id);
  const names = { lobby: "room:lobby", ops: "room:ops", notifications: "notifications" };
  for (const [key, name] of Object.entries(names)) {
    hub.subscribe(name).addEventListener("message", window.record(key));
  }
  hub.addEventListener("message", (e) => e.detail.id && window.got.all.push(e.detail.id));
  await new Promise((resolve) => {
    hub.addEventListener("state", (e) => e.detail.state === "open" && resolve());
    hub.connect();
  });
  return { transport: hub.transport, channels: hub.channels };
}"""

ADD_AND_SEND = """async () => {
  const later = window.hub.subscribe("room:later");
  later.addEventListener("message", window.record("later"));
  await new Promise((resolve) => {
    later.addEventListener("subscribed", resolve, { once: true });
  });
  const ack = await later.send("from the page");
  return ack.id;
}"""


async def live_connections(server: LiveServer) -> int:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        return int((await client.get("/healthz")).json()["connections"])


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_one_page_follows_three_channels_on_one_connection(
        demo_server: LiveServer, browser: Any, transport: str) -> None:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{demo_server.url}/healthz")
        opened = await page.evaluate(OPEN_THREE, {"token": make_token("alice"), "transport": transport})
        assert opened == {"transport": transport, "channels": ["room:lobby", "room:ops", "notifications"]}
        assert await live_connections(demo_server) == 1

        hub = demo_server.hub
        lobby = await hub.publish("room:lobby", {"type": "chat", "text": "a"}, sender="bob")
        ops = await hub.publish("room:ops", {"type": "chat", "text": "b"}, sender="bob")
        note = await hub.notify("alice", {"n": 1})
        everyone = await hub.broadcast("all")
        await hub.publish("room:elsewhere", {"type": "chat", "text": "not followed"}, sender="bob")
        await page.wait_for_function("() => window.got.all.length >= 4", timeout=EXPECT_MS)
        got = await page.evaluate("() => window.got")
        assert got["lobby"] == [f"chat:{lobby.id}"]
        assert got["ops"] == [f"chat:{ops.id}"]
        assert got["notifications"] == [f"notification:{note.id}", f"notification:{everyone.id}"]

        acked = await page.evaluate(ADD_AND_SEND)  # SSE: a reconnect with the new set, resumed
        later = await hub.publish("room:later", {"type": "chat", "text": "c"}, sender="bob")
        await page.wait_for_function("() => window.got.later.length >= 2", timeout=EXPECT_MS)
        got = await page.evaluate("() => window.got")
        assert got["later"] == [f"chat:{acked}", f"chat:{later.id}"]
        assert got["all"] == [lobby.id, ops.id, note.id, everyone.id, acked, later.id]  # each once
        assert await live_connections(demo_server) == 1
    finally:
        await context.close()
