"""The worked example in Chromium: two users sign in with the host app's own form and chat
through hubbub mounted at /rt, signed in by their session cookies (no token in the page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import expect

from tests.browser.conftest import EXPECT_MS, Pages
from tests.example_server import example_server


async def sign_in(pages: Pages, url: str, user: str) -> Any:
    context = await pages.browser.new_context()
    pages.contexts.append(context)
    context.set_default_timeout(EXPECT_MS)
    page = await context.new_page()
    page.on("pageerror", lambda error: pages.page_errors.append(f"{user}: {error}"))
    await page.goto(url)
    await page.locator("input[name=user]").fill(user)
    await page.locator("button", has_text="Sign in").click()
    await expect(page.locator("#me")).to_have_text(user)
    await expect(page.locator("#state")).to_have_text("open")
    return page


async def say(page: Any, text: str) -> None:
    await page.locator("#text").fill(text)
    await page.locator("#text").press("Enter")


async def test_example_two_users_chat_and_a_refusal_is_shown(pages: Pages, tmp_path: Path) -> None:
    async with example_server(tmp_path / "chat.sqlite3") as example:
        alice = await sign_in(pages, example.url, "alice")
        bob = await sign_in(pages, example.url, "bob")
        await say(alice, "hello bob")
        await say(bob, "hi alice")
        for page in (alice, bob):
            await expect(page.locator("#messages li")).to_have_text(["alice: hello bob", "bob: hi alice"])
        await say(bob, "free spam")
        await expect(bob.locator("#error")).to_have_text("that word is not welcome here")
        await expect(alice.locator("#messages li")).to_have_count(2)  # nobody got it
