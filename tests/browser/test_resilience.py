"""The demo page through drops, restarts, expiring tokens and a blocked WebSocket."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from playwright.async_api import TimeoutError as PlaywrightTimeout
from playwright.async_api import expect

from tests.browser.conftest import (
    DEMO_ENV,
    EXPECT_MS,
    RECONNECT_MS,
    Pages,
    SilentProxy,
    assert_no_duplicates,
    chat_texts,
    demo_log,
    post_chat,
    send,
    serve_on,
    short_token_route,
)
from tests.conftest import LiveServer, ServerFactory, make_token

pytestmark = pytest.mark.browser


async def wait_for_drop(page: Any, welcomes: int) -> None:
    """Until the page noticed its connection went (or already came back): typing is queued from here."""
    await page.wait_for_function(
        "n => window.demo.room.state !== 'open' || window.demo.log.welcomes > n", arg=welcomes,
        timeout=EXPECT_MS)


@pytest.mark.parametrize("transport", [None, "sse"], ids=["websocket", "sse"])
async def test_connections_dropped_mid_conversation_resume_with_every_message_once_in_order(
        demo_server: LiveServer, pages: Pages, transport: str | None) -> None:
    alice = await pages.open(demo_server, "alice", transport=transport)
    await send(alice, "before 1")
    await post_chat(demo_server, "bob", "lobby", "before 2")
    await expect(chat_texts(alice)).to_have_text(["before 1", "before 2"])
    welcomes = (await demo_log(alice))["welcomes"]

    # What a graceful restart does to every connection: WebSockets close 1012, SSE streams end.
    # The hub and its history stay, so the page must resume from its cursor.
    demo_server.hub.close_subscriptions()
    away = [f"while away {n}" for n in range(5)]
    for text in away:
        await post_chat(demo_server, "bob", "lobby", text)
    await wait_for_drop(alice, welcomes)
    await send(alice, "typed while away", acked=False)  # waits in the client's queue until it is back

    expected = ["before 1", "before 2", *away, "typed while away"]
    await expect(chat_texts(alice)).to_have_text(expected, timeout=RECONNECT_MS)
    await expect(alice.locator("#state")).to_have_text("open")
    await expect(alice.locator("#outbox li")).to_have_count(0)
    log = await demo_log(alice)
    assert log["welcomes"] > welcomes, "the page never reconnected"
    assert log["resyncs"] == [], "it reloaded history instead of resuming from its cursor"
    assert "closed" not in log["states"]
    await assert_no_duplicates(alice)

    await post_chat(demo_server, "bob", "lobby", "after")
    await expect(chat_texts(alice)).to_have_text([*expected, "after"])
    await expect(alice.locator("#transport")).to_have_text(transport or "websocket")


# Two heartbeats (1 s here) and the slack to notice, a ticket request that may sit on a
# silenced keep-alive connection until its 10 s timeout, then the backoff and the welcome.
SILENT_PATH_MS = 30_000


@pytest.mark.parametrize("transport", [None, "sse"], ids=["websocket", "sse"])
async def test_a_path_gone_silent_is_noticed_and_the_page_resumes_losing_nothing(
        server_factory: ServerFactory, pages: Pages, transport: str | None) -> None:
    # No close, no error, no FIN: the bytes just stop, as when a NAT drops its flows.
    server = await server_factory({**DEMO_ENV, "HEARTBEAT_INTERVAL": "1"})
    async with SilentProxy(server.port) as proxy:
        alice = await pages.open(proxy.url, "alice", transport=transport)
        await post_chat(server, "bob", "lobby", "before")
        await expect(chat_texts(alice)).to_have_text(["before"])
        welcomes = (await demo_log(alice))["welcomes"]

        proxy.silence()
        away = [f"while silent {n}" for n in range(3)]
        for text in away:
            await post_chat(server, "bob", "lobby", text)  # straight to the server: it is fine
        await expect(chat_texts(alice)).to_have_text(["before", *away], timeout=SILENT_PATH_MS)
        await expect(alice.locator("#state")).to_have_text("open")
        log = await demo_log(alice)
        assert log["welcomes"] > welcomes, "it never reconnected"
        assert log["resyncs"] == [], "it reloaded history instead of resuming from its cursor"
        await assert_no_duplicates(alice)
        await expect(alice.locator("#transport")).to_have_text(transport or "websocket")


async def test_a_real_restart_on_the_same_port_reconnects_and_resyncs(pages: Pages) -> None:
    async with serve_on() as first:
        port = first.server.port
        alice = await pages.open(first.server, "alice")
        await send(alice, "old 1")
        await post_chat(first.server, "bob", "lobby", "old 2")
        await expect(chat_texts(alice)).to_have_text(["old 1", "old 2"])
        welcomes = (await demo_log(alice))["welcomes"]
        first.drain()  # SIGTERM's first step; then the server stops
        await wait_for_drop(alice, welcomes)
    # The in-memory history died with the first process: the page's cursor is from an
    # old epoch, which the new server answers with a resync; the page reloads history.
    async with serve_on(port) as second:
        await post_chat(second.server, "bob", "lobby", "new 1")  # most likely before the page is back
        await alice.wait_for_function("n => window.demo.log.welcomes > n", arg=welcomes,
                                      timeout=RECONNECT_MS)
        await expect(chat_texts(alice)).to_have_text(["old 1", "old 2", "new 1"])
        await expect(alice.locator("#messages li[data-type=notice]")).to_have_count(1)
        await send(alice, "new 2")
        await post_chat(second.server, "bob", "lobby", "new 3")
        await expect(chat_texts(alice)).to_have_text(["old 1", "old 2", "new 1", "new 2", "new 3"])
        await expect(alice.locator("#state")).to_have_text("open")
        await expect(alice.locator("#inbox-state")).to_have_text("open", timeout=RECONNECT_MS)
        log = await demo_log(alice)
        assert [r.get("reason") for r in log["resyncs"]] == [None], log["resyncs"]
        assert "closed" not in log["states"]
        await assert_no_duplicates(alice)
        await alice.context.close()


@pytest.mark.parametrize("transport", [None, "sse"], ids=["websocket", "sse"])
async def test_an_expired_token_is_refreshed_without_the_user_noticing(
        demo_server: LiveServer, pages: Pages, transport: str | None) -> None:
    calls: list[dict[str, Any]] = []

    async def short_tokens(page: Any) -> None:
        # The demo login always gives an hour: here it gives 2-3 s (the claim is whole seconds).
        await page.route("**/auth/demo-token", short_token_route(3, calls))

    alice = await pages.open(demo_server, "alice", transport=transport, setup=short_tokens)
    await send(alice, "first token")
    expected = ["first token"]
    for cycle in range(3):
        # The server closes at expiry (4401 / end of stream); the page gets a token and resumes.
        welcomes = (await demo_log(alice))["welcomes"]
        await alice.wait_for_function("n => window.demo.log.welcomes > n", arg=welcomes, timeout=15_000)
        await post_chat(demo_server, "bob", "lobby", f"bob after expiry {cycle}")
        await send(alice, f"alice after expiry {cycle}")
        expected += [f"bob after expiry {cycle}", f"alice after expiry {cycle}"]
        await expect(chat_texts(alice)).to_have_text(expected)
    await expect(alice.locator("#outbox li")).to_have_count(0)  # no send failed on the way
    log = await demo_log(alice)
    assert "closed" not in log["states"], log["states"]
    assert log["errors"] == [], log["errors"]
    await expect(alice.locator("#banner")).to_be_hidden()
    assert sum(1 for call in calls if call.get("user") == "alice") >= 4
    await expect(alice.locator("#transport")).to_have_text(transport or "websocket")
    await assert_no_duplicates(alice)


async def test_a_just_expired_token_does_not_push_the_page_onto_sse(
        demo_server: LiveServer, pages: Pages) -> None:
    """A token provider whose clock runs a little behind the server's hands out, for a moment,
    tokens that expired a second or two ago. The server must refuse them in a way the client
    can see (401 on /auth/ticket, or 4401) and not as a failed upgrade, which the client has
    to read as a WebSocket blocked on the way."""
    stale_until: list[float] = []

    async def stale_then_fresh(route: Any) -> None:
        body = json.loads(route.request.post_data or "{}")
        if body.get("scope"):
            ttl = 3600.0
        else:
            stale_until[:] = stale_until or [time.monotonic() + 2.0]
            ttl = -2.0 if time.monotonic() < stale_until[0] else 3600.0
        token = make_token(str(body["user"]), scope=str(body.get("scope", "")), ttl_s=ttl)
        await route.fulfill(status=200, content_type="application/json",
                            body=json.dumps({"token": token, "expires_in": int(ttl)}))

    async def setup(page: Any) -> None:
        await page.route("**/auth/demo-token", stale_then_fresh)

    alice = await pages.open(demo_server, "alice", setup=setup, wait_open=False)
    await expect(alice.locator("#state")).to_have_text("open", timeout=RECONNECT_MS)
    await send(alice, "hello")
    await expect(chat_texts(alice)).to_have_text(["hello"])
    # The WebSocket was never blocked: only the token was stale for two seconds.
    await expect(alice.locator("#transport")).to_have_text("websocket")


THROWS = """window.WebSocket = class {
  constructor() { throw new DOMException("blocked by policy (test)", "SecurityError"); }
};"""
REFUSED = """(() => {
  // As a proxy that refuses the upgrade: closes 1006 before opening. Same origin (the page's
  // Content-Security-Policy allows no other), on a path that answers 404 to an upgrade.
  const Real = window.WebSocket;
  window.WebSocket = class extends Real {
    constructor(url, protocols) {
      const u = new URL(url);
      u.pathname = "/no-websocket-here";
      super(u.href, protocols);
    }
  };
})();"""


async def drop_websockets(page: Any) -> None:
    async def close(ws: Any) -> None:
        await ws.close()

    await page.route_web_socket("**/ws/**", close)


@pytest.mark.parametrize("how", ["constructor-throws", "connection-refused", "closed-at-once"])
async def test_a_blocked_websocket_falls_back_to_sse(demo_server: LiveServer, pages: Pages, how: str) -> None:
    init_script = {"constructor-throws": THROWS, "connection-refused": REFUSED}.get(how)
    setup = drop_websockets if how == "closed-at-once" else None
    alice = await pages.open(demo_server, "alice", init_script=init_script, setup=setup)
    await expect(alice.locator("#transport")).to_have_text("sse")
    await expect(alice.locator("#inbox-transport")).to_have_text("sse")
    await expect(alice.locator("#inbox-state")).to_have_text("open")
    bob = await pages.open(demo_server, "bob")
    await expect(bob.locator("#transport")).to_have_text("websocket")

    await send(alice, "from behind the proxy")
    await send(bob, "hello over websocket")
    await post_chat(demo_server, "carol", "lobby", "hello over http")
    conversation = ["from behind the proxy", "hello over websocket", "hello over http"]
    for page in (alice, bob):
        await expect(chat_texts(page)).to_have_text(conversation)
        await assert_no_duplicates(page)
    log = await demo_log(alice)
    assert log["errors"] == [] and "closed" not in log["states"], log


async def test_a_restart_without_jwt_secret_recovers_with_a_fresh_demo_token(pages: Pages) -> None:
    # `make run` twice: the second process has a new ephemeral secret, so the page's cached
    # token is refused (401 / 4401). The page must drop it and sign in again, by itself.
    async with serve_on(secret=False) as first:
        port = first.server.port
        alice = await pages.open(first.server, "alice")
        await send(alice, "before")
        welcomes = (await demo_log(alice))["welcomes"]
        first.drain()
        await wait_for_drop(alice, welcomes)
    async with serve_on(port, secret=False) as second:
        await alice.wait_for_function("n => window.demo.log.welcomes > n", arg=welcomes,
                                      timeout=RECONNECT_MS)
        await expect(alice.locator("#state")).to_have_text("open")
        await expect(alice.locator("#inbox-state")).to_have_text("open", timeout=RECONNECT_MS)
        await send(alice, "after")
        await post_chat_as_demo(second.server, "bob", "lobby", "hello again")
        await expect(chat_texts(alice)).to_contain_text(["after", "hello again"])


async def post_chat_as_demo(server: LiveServer, user: str, room: str, text: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        token = (await client.post("/auth/demo-token", json={"user": user})).json()["token"]
        reply = await client.post(f"/api/rooms/{room}/messages", json={"text": text},
                                  headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 202, reply.text


async def test_a_production_server_page_says_sign_in_is_up_to_the_app(pages: Pages) -> None:
    async with serve_on(env={"DEMO_LOGIN": "0"}) as server:
        page = await pages.open(server.server, "alice", wait_open=False)
        banner = page.locator("#banner")
        await expect(banner).to_contain_text("Sign-in is up to your app")
        await expect(page.locator("#app")).to_be_hidden()
        await page.wait_for_timeout(1500)  # nothing retries behind it
        requests = await page.evaluate(
            "() => performance.getEntriesByType('resource').filter(e => e.name.includes('/auth/')).length")
    assert requests == 1


async def test_a_draining_server_does_not_push_the_page_onto_sse(pages: Pages) -> None:
    """Behind a load balancer a draining process still gets new connections for a while
    (before the balancer acts on its 503 /healthz). Browsers cannot see the 503 it answers a WebSocket
    upgrade with, so the page must be told in a way it can see (accept, then close 1012)."""
    async with serve_on() as server:
        alice = await pages.open(server.server, "alice")
        welcomes = (await demo_log(alice))["welcomes"]
        server.drain()  # closes every WebSocket 1012; new ones are refused while draining
        await wait_for_drop(alice, welcomes)
        # While it drains (a few seconds, as on a rolling restart), the page must not give
        # up on WebSocket: the next two attempts land here too, well within 8 s.
        with pytest.raises(PlaywrightTimeout):
            await alice.wait_for_function("() => window.demo.room.transport === 'sse'", timeout=8_000)
        server.app.extensions["hubbub"]["hubbub"].draining = False  # the successor takes over
        await alice.evaluate("() => dispatchEvent(new Event('online'))")  # skip the rest of the backoff
        await expect(alice.locator("#state")).to_have_text("open", timeout=RECONNECT_MS)
        await expect(alice.locator("#transport")).to_have_text("websocket")
        await alice.context.close()
