"""The demo page in real headless Chromium: chat, presence, notifications, SSE, layout."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from tests.browser.conftest import (
    ROOT,
    Pages,
    assert_no_duplicates,
    chat_items,
    chat_texts,
    demo_log,
    notify,
    post_chat,
    send,
)
from tests.conftest import LiveServer

pytestmark = pytest.mark.browser

SCREENSHOT = ROOT / "docs" / "screenshot.png"


async def test_two_pages_in_one_room_chat_both_ways(demo_server: LiveServer, pages: Pages) -> None:
    # alice signs in with the form; bob follows a link with the room in the hash.
    alice = await pages.open(demo_server, None, wait_open=False)
    await expect(alice.locator("#login-form")).to_be_visible()
    await alice.locator("#user-input").fill("alice")
    await alice.locator("#room-input").fill("lobby")
    await alice.locator("#join").click()
    await expect(alice.locator("#state")).to_have_text("open")
    await expect(alice.locator("#transport")).to_have_text("websocket")
    await expect(alice.locator("#me")).to_have_text("alice")
    urls: list[str] = []

    async def watch(page: Any) -> None:
        page.on("websocket", lambda ws: urls.append(ws.url))
        page.on("request", lambda request: urls.append(request.url))

    bob = await pages.open(demo_server, "bob", hash_room="lobby", setup=watch)
    await expect(bob.locator("#room-name")).to_have_text("#lobby")
    await expect(bob.locator("#state")).to_have_text("open")
    await expect(bob.locator("#inbox-state")).to_have_text("open")  # both sockets opened
    # Tokens stay out of URLs: the client trades them for single-use tickets.
    sockets = [url for url in urls if url.startswith("ws://")]
    assert any("/ws/chat?room=lobby&ticket=" in url for url in sockets), sockets
    assert any("/ws/notifications?ticket=" in url for url in sockets), sockets
    assert not [url for url in urls if "token=" in url or "eyJ" in url], urls

    for page in (alice, bob):
        await expect(page.locator("#presence li")).to_have_count(2)
        await expect(page.locator("#presence li[data-user=alice]")).to_be_visible()
        await expect(page.locator("#presence li[data-user=bob]")).to_be_visible()

    await send(alice, "hi bob")
    await expect(chat_texts(bob)).to_have_text(["hi bob"])
    await send(bob, "hi alice")
    await send(alice, "how are you?")
    await send(bob, "fine, thanks")
    conversation = ["hi bob", "hi alice", "how are you?", "fine, thanks"]
    for page in (alice, bob):
        # to_have_text on a list: exactly these items, in this order: each message once.
        await expect(chat_texts(page)).to_have_text(conversation)
        await expect(page.locator("#outbox li")).to_have_count(0)  # every send acknowledged
        await assert_no_duplicates(page)
    # Own messages are marked as such, and the senders are right on both sides.
    await expect(alice.locator("#messages li.mine .text")).to_have_text(["hi bob", "how are you?"])
    await expect(bob.locator("#messages li.mine .text")).to_have_text(["hi alice", "fine, thanks"])
    senders = ["alice", "bob", "alice", "bob"]
    for page in (alice, bob):
        assert [await li.get_attribute("data-sender") for li in await chat_items(page).all()] == senders
        ids = [await li.get_attribute("data-id") for li in await chat_items(page).all()]
        assert len(set(ids)) == 4

    # bob leaves: alice's presence follows the leave frame.
    await bob.context.close()
    await expect(alice.locator("#presence li")).to_have_count(1)
    await expect(alice.locator("#messages li[data-type=leave]")).to_have_text(["bob left"])


async def test_a_late_joiner_sees_recent_history_once(demo_server: LiveServer, pages: Pages) -> None:
    for n in range(3):
        await post_chat(demo_server, "bob", "lobby", f"earlier {n}")
    carol = await pages.open(demo_server, "carol")
    await expect(chat_texts(carol)).to_have_text(["earlier 0", "earlier 1", "earlier 2"])
    await post_chat(demo_server, "bob", "lobby", "now")
    await expect(chat_texts(carol)).to_have_text(["earlier 0", "earlier 1", "earlier 2", "now"])


async def test_a_notification_posted_with_curl_appears(demo_server: LiveServer, pages: Pages) -> None:
    alice = await pages.open(demo_server, "alice")
    bob = await pages.open(demo_server, "bob")
    await expect(alice.locator("#inbox-state")).to_have_text("open")
    await expect(bob.locator("#inbox-state")).to_have_text("open")

    # The command exactly as the page shows it (plus: quiet, fail on HTTP errors, bounded).
    await expect(alice.locator("#curl")).to_contain_text("Bearer ey")
    shown = await alice.locator("#curl").inner_text()
    assert shown.startswith(f"curl -X POST {demo_server.url}/api/notifications ")
    reply = await run_curl(shown)
    assert re.fullmatch(r'\{"id":"[^"]+"\}\s*', reply), reply
    await expect(alice.locator("#notifications li .text")).to_have_text(["hi"])
    await expect(alice.locator("#notifications li .kind")).to_have_text(["for you"])

    # The broadcast command reaches everybody; bob never sees alice's own notification.
    broadcast = await alice.locator("#curl-broadcast").text_content()
    assert broadcast and '"broadcast":true' in broadcast
    await run_curl(broadcast)
    await expect(alice.locator("#notifications li .text")).to_have_text(["Deploy at 5", "hi"])  # newest first
    await expect(bob.locator("#notifications li .text")).to_have_text(["Deploy at 5"])
    await expect(bob.locator("#notifications li.broadcast")).to_have_count(1)


async def run_curl(command: str) -> str:
    argv = shlex.split(command)
    assert argv[0] == "curl"
    argv[1:1] = ["-sS", "--fail-with-body", "--max-time", "5"]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(10):
        out, err = await process.communicate()
    assert process.returncode == 0, (out, err)
    return out.decode()


async def test_the_page_forced_to_sse_still_sends_and_receives(demo_server: LiveServer, pages: Pages) -> None:
    alice = await pages.open(demo_server, "alice", transport="sse")
    await expect(alice.locator("#transport")).to_have_text("sse")
    await expect(alice.locator("#inbox-transport")).to_have_text("sse")
    bob = await pages.open(demo_server, "bob")
    await expect(bob.locator("#transport")).to_have_text("websocket")

    await send(alice, "over sse")
    await expect(chat_texts(bob)).to_have_text(["over sse"])
    await send(bob, "over websocket")
    await post_chat(demo_server, "carol", "lobby", "over http")
    await send(alice, "sse again")
    conversation = ["over sse", "over websocket", "over http", "sse again"]
    for page in (alice, bob):
        await expect(chat_texts(page)).to_have_text(conversation)
        await assert_no_duplicates(page)
    await expect(alice.locator("#messages li.mine .text")).to_have_text(["over sse", "sse again"])
    await expect(alice.locator("#presence li")).to_have_count(2)

    await notify(demo_server, {"user": "alice", "data": {"message": "via sse"}})
    await expect(alice.locator("#notifications li .text")).to_have_text(["via sse"])
    # The SSE stream never changed transport on the way.
    assert set((await demo_log(alice))["states"]) <= {"connecting", "open"}


async def test_screenshot_of_the_demo_page(demo_server: LiveServer, pages: Pages,
                                           tmp_path: Path) -> None:
    """Renders the README's picture; `UPDATE_SCREENSHOT=1 make test` writes it to docs/."""
    alice = await pages.open(demo_server, "alice", viewport=(1280, 800))
    bob = await pages.open(demo_server, "bob")
    await send(bob, "Morning! Is the deploy still on for 5?")
    await expect(chat_texts(alice)).to_have_count(1)
    await send(alice, "Yes, I'll post a notification when it starts.")
    await post_chat(demo_server, "carol", "lobby", "Sent from curl: POST /api/rooms/lobby/messages")
    await expect(chat_texts(alice)).to_have_count(3)
    await notify(demo_server, {"user": "alice", "data": {"message": "New product created"}})
    await notify(demo_server, {"broadcast": True, "data": {"message": "Deploy at 5"}})
    await expect(alice.locator("#notifications li")).to_have_count(2)
    await expect(alice.locator("#presence li")).to_have_count(2)
    await expect(alice.locator("#curl")).to_contain_text("Bearer ey")
    # Let the "fresh" highlight of the notifications fade before the picture.
    await expect(alice.locator("#notifications li.fresh")).to_have_count(0)
    target = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "screenshot.png"
    await alice.screenshot(path=str(target))
    assert target.stat().st_size > 10_000


@pytest.mark.parametrize("signed_in", [True, False], ids=["chat", "sign-in"])
async def test_a_phone_viewport_has_no_horizontal_scroll(demo_server: LiveServer, pages: Pages,
                                                          signed_in: bool) -> None:
    page = await pages.open(demo_server, "alice" if signed_in else None, viewport=(390, 844),
                            wait_open=signed_in)
    if signed_in:
        # Long words, long ids and the curl command must wrap, not widen the page.
        await send(page, "x" * 400)
        await post_chat(demo_server, "a-very-long-user-name-that-goes-on-and-on-and-on-for-ever-and-ever",
                        "lobby", "https://example.com/" + "path/" * 40)
        await notify(demo_server, {"user": "alice", "data": {"deep": {"json": ["y" * 300]}}})
        await expect(chat_texts(page)).to_have_count(2)
        await expect(page.locator("#notifications li")).to_have_count(1)
        await expect(page.locator("#curl")).to_contain_text("Bearer ey")
    else:
        await expect(page.locator("#login-form")).to_be_visible()
    widths = await page.evaluate(
        "() => ({doc: document.documentElement.scrollWidth, body: document.body.scrollWidth,"
        " view: window.innerWidth})")
    assert widths["doc"] <= widths["view"] and widths["body"] <= widths["view"], json.dumps(widths)
    # The composer is reachable and usable at this size.
    if signed_in:
        box = await page.locator("#send").bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390
