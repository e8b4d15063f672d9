"""Tabs of one origin share one connection (shareTabs) in Chromium: five tabs over SSE on
HTTP/1.1 hold one stream, a POST from any of them goes through, and when the leading tab
closes mid-stream the next one takes over with nothing lost or doubled."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.browser.conftest import EXPECT_MS, RECONNECT_MS
from tests.conftest import LiveServer, make_token

pytestmark = pytest.mark.browser

OPEN_TAB = """async ({ token }) => {
  const { Hubbub } = await import("/static/hubbub.js");
  const hub = new Hubbub({
    channels: ["notifications", "room:lobby", "room:ops"], getToken: () => token,
    transport: "sse", shareTabs: "alice", minDelayMs: 100,
  });
  window.got = [];
  hub.addEventListener("message", (e) => e.detail.id && window.got.push(e.detail.id));
  window.hub = hub;
  await new Promise((resolve) => {
    hub.addEventListener("state", (e) => e.detail.state === "open" && resolve());
    hub.connect();
  });
  return hub.transport;
}"""


async def live_connections(server: LiveServer) -> int:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        return int((await client.get("/healthz")).json()["connections"])


async def open_tabs(server: LiveServer, context: Any, count: int) -> list[Any]:
    tabs = []
    for _ in range(count):
        page = await context.new_page()
        await page.goto(f"{server.url}/healthz")
        assert await page.evaluate(OPEN_TAB, {"token": make_token("alice")}) == "sse"
        tabs.append(page)
    return tabs


async def received(tab: Any) -> list[str]:
    return await tab.evaluate("() => window.got")  # type: ignore[no-any-return]


async def test_five_tabs_share_one_stream_and_any_tab_can_post(demo_server: LiveServer, browser: Any) -> None:
    context = await browser.new_context()
    try:
        tabs = await open_tabs(demo_server, context, 5)
        assert await live_connections(demo_server) == 1

        hub = demo_server.hub
        sent = [(await hub.publish("room:lobby", {"type": "chat", "text": "a"}, sender="bob")).id,
                (await hub.publish("room:ops", {"type": "chat", "text": "b"}, sender="bob")).id,
                (await hub.notify("alice", "c")).id]
        # Every tab has these first: the POST's ack below comes on another connection than
        # the stream, and the posting tab emits its message from the ack if it is first.
        for tab in tabs:
            await tab.wait_for_function("n => window.got.length >= n", arg=len(sent), timeout=EXPECT_MS)
        # The fifth tab posts (a follower: its own HTTP request, beside the leader's stream).
        posted = await tabs[4].evaluate("() => window.hub.subscribe('room:ops').send('from tab 5')"
                                        ".then((ack) => ack.id)")
        sent.append(posted)
        for tab in tabs:
            await tab.wait_for_function("n => window.got.length >= n", arg=len(sent), timeout=EXPECT_MS)
            assert await received(tab) == sent
        assert await live_connections(demo_server) == 1
    finally:
        await context.close()


async def test_the_leading_tab_closed_mid_stream_another_resumes_with_nothing_lost_or_doubled(
        demo_server: LiveServer, browser: Any) -> None:
    context = await browser.new_context()
    try:
        leader, *others = await open_tabs(demo_server, context, 3)  # the first tab got the lock
        hub, sent = demo_server.hub, []
        for i in range(60):
            sent.append((await hub.publish("room:lobby", {"type": "chat", "text": f"m{i}"}, sender="bob")).id)
            if i == 20:
                await others[0].wait_for_function("() => window.got.length >= 10", timeout=EXPECT_MS)
                await leader.close()  # the browser frees its lock; the next tab in line leads
            await asyncio.sleep(0.01)  # a steady stream, not a burst
        for tab in others:
            await tab.wait_for_function("n => window.got.length >= n", arg=len(sent), timeout=RECONNECT_MS)
            assert await received(tab) == sent
    finally:
        await context.close()
