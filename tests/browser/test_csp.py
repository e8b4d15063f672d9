"""The demo page under its Content-Security-Policy in real Chromium: nothing it needs is
blocked (modules, stylesheet, WebSocket, SSE, fetch), and no other site can frame it."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import expect

from tests.browser.conftest import EXPECT_MS, Pages, chat_texts, send
from tests.conftest import LiveServer

pytestmark = pytest.mark.browser

# Records every violation the page reports (a blocked load also logs to the console).
WATCH_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.cspViolations.push(`${e.effectiveDirective} blocked ${e.blockedURI}`));
"""


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_demo_page_under_csp_nothing_blocked(demo_server: LiveServer, pages: Pages,
                                                   transport: str) -> None:
    console: list[str] = []

    async def watch(page: Any) -> None:
        page.on("console", lambda message: console.append(message.text))

    page = await pages.open(demo_server, "alice", transport=transport, init_script=WATCH_VIOLATIONS,
                            setup=watch)
    await expect(page.locator("#transport")).to_have_text(transport)
    await expect(page.locator("#inbox-state")).to_have_text("open")
    await send(page, "under csp")
    await expect(chat_texts(page)).to_have_text(["under csp"])
    await expect(page.locator("#curl")).not_to_have_text("fetching a notify token…")
    assert await page.evaluate("() => window.cspViolations") == []
    assert not [line for line in console if "Content Security Policy" in line], console


async def test_demo_page_framed_by_another_page_blocked(demo_server: LiveServer, pages: Pages) -> None:
    host = await pages.open(demo_server, None, wait_open=False)  # any page to put a frame in
    await host.set_content(f'<iframe id="demo" src="{demo_server.url}/"></iframe>')
    frame_element = host.locator("#demo")
    await expect(frame_element).to_be_attached()
    frame = await (await frame_element.element_handle()).content_frame()
    assert frame is not None
    await frame.wait_for_load_state(timeout=EXPECT_MS)
    assert await frame.locator("#login-form").count() == 0  # Chromium shows its error page instead
