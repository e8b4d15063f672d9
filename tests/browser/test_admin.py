"""The operator page in Chromium: off without ADMIN_TOKEN, behind it otherwise, and its
numbers move when traffic is sent (UPDATE_SCREENSHOT=1 remakes docs/admin.png)."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
from playwright.async_api import expect

from tests.browser.conftest import EXPECT_MS, Pages
from tests.conftest import ServerFactory, make_token
from tests.e2e.clients import recv_json, recv_until, ws_connect

ADMIN_TOKEN = "operator-token-0123456789abcdef"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "admin.png"


async def test_admin_off_without_token_and_closed_to_a_wrong_one(server_factory: ServerFactory) -> None:
    off = await server_factory({})
    on = await server_factory({"ADMIN_TOKEN": ADMIN_TOKEN})
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{off.url}/admin")).status_code == 404
        assert (await client.get(f"{on.url}/admin/stream?token=wrong")).status_code == 401


async def test_admin_numbers_move_with_traffic(pages: Pages, server_factory: ServerFactory,
                                               tmp_path: Path) -> None:
    server = await server_factory({"ADMIN_TOKEN": ADMIN_TOKEN, "RATE_LIMIT_BURST": "100"})
    context = await pages.browser.new_context(viewport={"width": 1100, "height": 720})
    pages.contexts.append(context)
    context.set_default_timeout(EXPECT_MS)
    page = await context.new_page()
    page.on("pageerror", lambda error: pages.page_errors.append(f"admin: {error}"))
    await page.goto(f"{server.url}/admin")
    await page.locator("#token").fill(ADMIN_TOKEN)
    await page.locator("#token").press("Enter")
    await expect(page.locator("#feed")).to_have_text("live")
    await expect(page.locator("#ws")).to_have_text("0")
    tokens = [make_token(f"user{n}") for n in range(3)]
    async with AsyncExitStack() as members:
        # Each in once it saw its own join, so the joins are known: 1 + 2 in #launch, 1 in #ops.
        for n, room in enumerate(("launch", "launch", "ops")):
            ws = await members.enter_async_context(
                ws_connect(f"{server.ws_url}/ws/chat?room={room}&token={tokens[n]}"))
            assert (await recv_json(ws))["type"] == "welcome"
            await recv_until(ws, "join")
        await expect(page.locator("#ws")).to_have_text("3")
        await expect(page.locator("#rooms li").first).to_have_text("#launch · 2")
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            for n in range(10):
                reply = await client.post("/api/rooms/launch/messages", json={"text": f"go {n}"},
                                          headers={"Authorization": f"Bearer {tokens[2]}"})
                assert reply.status_code == 202
        await expect(page.locator("#published")).to_have_text("10")
        await expect(page.locator("#deliveries")).to_have_text(str(4 + 10 * 2))  # joins, then 2 each
        # docs/admin.png is remade with UPDATE_SCREENSHOT=1, as the demo page's is
        await page.screenshot(path=str(SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1"
                                       else tmp_path / "admin.png"))
    await expect(page.locator("#ws")).to_have_text("0")
