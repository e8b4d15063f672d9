"""hubbub inside an existing Quart app: prefixes, an outer mount's root_path, two instances
side by side, the host left alone, hooks, and publishing from server code.

Each test builds a host app with its own routes and serves it with a real Hypercorn.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.middleware import DispatcherMiddleware
from quart import Quart, websocket
from websockets.asyncio.client import connect

from hubbub import Hubbub, Principal, Refused, RequestLike, Settings
from tests.conftest import SECRET, make_token
from tests.e2e.clients import bearer, recv_json, recv_until, sse_connect, ws_connect

OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256!"


def host_app() -> Quart:
    """A host with a page and a WebSocket of its own."""
    app = Quart("host")

    @app.get("/")
    async def home() -> str:
        return "the host's own page"

    @app.websocket("/ws/host")
    async def host_socket() -> None:
        while True:
            await websocket.send(f"host: {await websocket.receive()}")

    return app


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serves any ASGI app with Hypercorn on a free port; its base URL."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = config.errorlog = None
    config.graceful_timeout = 2
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as client, asyncio.timeout(10):
        while True:
            try:
                await client.get("/")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.02)
    try:
        yield url
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


async def test_every_endpoint_lives_under_the_prefix_host_routes_untouched() -> None:
    app = host_app()
    rt = Hubbub(app, url_prefix="/rt", settings=Settings(jwt_secret=SECRET))
    token = make_token("alice")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        ws_url = url.replace("http", "ws")
        async with ws_connect(f"{ws_url}/rt/ws/chat?room=lobby&token={token}") as chat, \
                sse_connect(client, f"/rt/sse/chat?room=lobby&token={token}") as sse:
            assert (await recv_json(chat))["type"] == "welcome"
            assert (await sse.next_json())["type"] == "welcome"
            reply = await client.post("/rt/api/rooms/lobby/messages", json={"text": "hi"},
                                      headers=bearer(make_token("bob")))
            assert reply.status_code == 202
            assert (await recv_until(chat, "chat"))["text"] == "hi"
            assert (await sse.next_json())["type"] in ("join", "chat")
        assert (await client.get("/rt/healthz")).json()["status"] == "ok"
        assert (await client.get("/rt/static/hubbub.js")).status_code == 200
        assert (await client.get("/")).text == "the host's own page"
        assert (await client.get("/healthz")).status_code == 404  # nothing of hubbub's outside /rt
        assert (await client.get("/api/rooms/lobby/messages")).status_code == 404
        await rt.broadcast({"message": "from server code"})


async def test_outer_mount_root_path_honoured_for_live_endpoints() -> None:
    # hubbub's whole standalone app mounted under /hub by an ASGI dispatcher: the live
    # endpoints used to ignore root_path and answer 404 while /hub/healthz worked.
    inner = Quart("inner")
    Hubbub(inner, settings=Settings(jwt_secret=SECRET))
    dispatcher = DispatcherMiddleware({"/hub": inner, "": host_app()})
    token = make_token("alice")
    async with serving(dispatcher) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.get("/hub/healthz")).status_code == 200
        async with ws_connect(f"{url.replace('http', 'ws')}/hub/ws/chat?room=lobby&token={token}") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
        async with sse_connect(client, f"/hub/sse/chat?room=lobby&token={token}") as sse:
            assert (await sse.next_json())["type"] == "welcome"
        assert (await client.get("/")).text == "the host's own page"


async def test_two_instances_in_one_app_do_not_interfere() -> None:
    app = host_app()
    first = Hubbub(app, url_prefix="/a", settings=Settings(jwt_secret=SECRET, history_size=5))
    Hubbub(app, url_prefix="/b", settings=Settings(jwt_secret=OTHER_SECRET))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        ws_url = url.replace("http", "ws")
        token_a, token_b = make_token("alice"), make_token("alice", secret=OTHER_SECRET)
        async with ws_connect(f"{ws_url}/a/ws/chat?room=lobby&token={token_a}") as a, \
                ws_connect(f"{ws_url}/b/ws/chat?room=lobby&token={token_b}") as b:
            assert (await recv_json(a))["type"] == (await recv_json(b))["type"] == "welcome"
            await first.publish("room:lobby", {"type": "chat", "text": "only on a"})
            assert (await recv_until(a, "chat"))["text"] == "only on a"
            with pytest.raises(TimeoutError):
                await recv_until(b, "chat", timeout=0.5)
        # each keeps its own secret
        assert (await client.get("/a/api/rooms/lobby/messages", headers=bearer(token_b))).status_code == 401
        history = (await client.get("/b/api/rooms/lobby/messages", headers=bearer(token_b))).json()
        assert history["messages"] == []
    with pytest.raises(ValueError, match="already mounted"):
        Hubbub(app, url_prefix="/a/")


async def test_compression_is_a_setting_of_each_app_host_websockets_keep_it() -> None:
    # No class patching: an app with WEBSOCKET_COMPRESSION, one without, and the host's own
    # WebSocket, in one process; a client offering permessage-deflate gets what each says.
    plain, compressed = host_app(), Quart("compressed")
    Hubbub(plain, settings=Settings(jwt_secret=SECRET))
    Hubbub(compressed, settings=Settings(jwt_secret=SECRET, websocket_compression=True))
    token = make_token("alice")

    async def negotiated(ws_url: str) -> str:
        async with asyncio.timeout(5):
            ws = await connect(ws_url, compression="deflate")
        try:
            return ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        finally:
            await ws.close()

    async with serving(plain) as plain_url, serving(compressed) as compressed_url:
        for _ in range(2):  # whichever app was made last, or served first
            assert "permessage-deflate" not in await negotiated(
                f"{plain_url.replace('http', 'ws')}/ws/chat?room=a&token={token}")
            assert "permessage-deflate" in await negotiated(
                f"{compressed_url.replace('http', 'ws')}/ws/chat?room=a&token={token}")
            assert "permessage-deflate" in await negotiated(f"{plain_url.replace('http', 'ws')}/ws/host")
        async with connect(f"{compressed_url.replace('http', 'ws')}/ws/chat?room=a&token={token}",
                           compression="deflate") as ws:
            assert (await recv_json(ws))["type"] == "welcome"  # compressed frames, through Hypercorn


async def test_host_process_left_alone() -> None:
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), gc.get_threshold(),
              list(logging.getLogger().handlers), logging.getLogger().level)
    app = host_app()
    Hubbub(app, url_prefix="/rt", settings=Settings(jwt_secret=SECRET))
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/rt/healthz")).status_code == 200
        during = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), gc.get_threshold(),
                  list(logging.getLogger().handlers), logging.getLogger().level)
    assert during == before


# -- hooks ---------------------------------------------------------------------------------


def hooked_app(authenticate: Callable[..., Any] | None = None,
               on_publish: Callable[..., Any] | None = None) -> tuple[Quart, Hubbub]:
    app = host_app()
    rt = Hubbub(app, url_prefix="/rt", settings=Settings(jwt_secret=SECRET))
    if authenticate is not None:
        rt.authenticate(authenticate)
    if on_publish is not None:
        rt.on_publish(on_publish)
    return app, rt


async def test_authenticate_hook_host_login_on_every_endpoint_then_jwt() -> None:
    async def from_header(request: RequestLike) -> Principal | None:
        user = request.headers.get("X-Host-User") or request.cookies.get("host_user")
        return Principal(user) if user else None

    app, _ = hooked_app(authenticate=from_header)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        ws_url = url.replace("http", "ws")
        async with ws_connect(f"{ws_url}/rt/ws/notifications",
                              additional_headers={"Cookie": "host_user=carol"}) as ws:
            assert (await recv_json(ws))["user"] == "carol"
        async with sse_connect(client, "/rt/sse/notifications", headers={"X-Host-User": "dave"}) as sse:
            assert (await sse.next_json())["user"] == "dave"
        reply = await client.post("/rt/api/rooms/lobby/messages", json={"text": "by cookie"},
                                  headers={"Cookie": "host_user=erin"})
        assert reply.status_code == 202
        messages = (await client.get("/rt/api/rooms/lobby/messages", headers=bearer(make_token("x")))).json()
        assert messages["messages"][-1]["sender"] == "erin"
        assert (await client.post("/rt/api/rooms/lobby/messages", json={"text": "nobody"})).status_code == 401


async def test_on_publish_transforms_refuses_and_survives_its_own_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    async def check(principal: Principal, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        seen.append((principal.user, channel, message))
        text = message.get("text", "")
        if "spam" in text:
            raise Refused("no spam, please")
        if "boom" in text:
            raise RuntimeError("the hook's own bug")
        return {**message, "text": text.upper(), "checked": True}

    app, _ = hooked_app(on_publish=check)
    token = make_token("alice")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with ws_connect(f"{url.replace('http', 'ws')}/rt/ws/chat?room=lobby&token={token}") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
            await ws.send('{"type":"chat","text":"buy spam"}')
            refused = await recv_until(ws, "error")
            assert (refused["code"], refused["detail"]) == ("refused", "no spam, please")
            with caplog.at_level(logging.ERROR):
                await ws.send('{"type":"chat","text":"boom"}')
                failed = await recv_until(ws, "error")
            assert failed["code"] == "internal_error"
            await ws.send('{"type":"chat","text":"still here","ref":"r1"}')
            ack = await recv_until(ws, "ack")  # the connection outlived both
            assert ack["ref"] == "r1"
            reply = await client.post("/rt/api/rooms/lobby/messages", json={"text": "spam again"},
                                      headers=bearer(token))
            assert reply.status_code == 422
            assert reply.json() == {"error": "refused", "detail": "no spam, please"}
            history = (await client.get("/rt/api/rooms/lobby/messages", headers=bearer(token))).json()
    assert [(m["text"], m["checked"]) for m in history["messages"]] == [("STILL HERE", True)]
    assert seen[0] == ("alice", "room:lobby", {"type": "chat", "text": "buy spam"})
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in logged] == ["the on_publish hook raised"]  # once, with its traceback
    assert logged[0].exc_info is not None and "own bug" in str(logged[0].exc_info[1])


async def test_on_publish_sees_notifications_posted_not_server_code() -> None:
    seen: list[str] = []

    async def check(principal: Principal, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        seen.append(channel)
        return message

    app, rt = hooked_app(on_publish=check)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        reply = await client.post("/rt/api/notifications", json={"user": "bob", "data": 1},
                                  headers=bearer(make_token("ops", scope="notify")))
        assert reply.status_code == 202
        await rt.notify("bob", 2)
        await rt.publish("room:lobby", {"type": "chat", "text": "from the server"}, sender="bot")
    assert seen == ["user:bob"]


async def test_on_publish_is_not_reached_by_a_client_over_its_rate() -> None:
    seen: list[str] = []

    async def check(principal: Principal, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        seen.append(message["text"])
        return message

    app = host_app()
    rt = Hubbub(app, url_prefix="/rt", settings=Settings(jwt_secret=SECRET, rate_limit_burst=2,
                                                          rate_limit_per_second=0.01))
    rt.on_publish(check)
    token = make_token("alice")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        replies = [await client.post("/rt/api/rooms/lobby/messages", json={"text": f"m{n}"},
                                     headers=bearer(token)) for n in range(3)]
        async with ws_connect(f"{url.replace('http', 'ws')}/rt/ws/chat?room=lobby&token={token}") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
            await ws.send('{"type":"chat","text":"m3","ref":"r3"}')
            refused = await recv_until(ws, "error")

    assert [r.status_code for r in replies] == [202, 202, 429]
    assert replies[2].json()["error"] == "rate_limited"
    assert (refused["code"], refused["ref"]) == ("rate_limited", "r3")
    assert seen == ["m0", "m1"]


@pytest.mark.parametrize("channel", ["lobby", "room:", "room:no spaces", "user:", "users:bob", ""])
async def test_publish_to_a_malformed_channel_raises_at_once(channel: str) -> None:
    rt = Hubbub(settings=Settings(jwt_secret=SECRET))
    await rt.hub.start()
    try:
        with pytest.raises(ValueError, match="channel"):
            await rt.publish(channel, {"type": "chat", "text": "hi"})
        with pytest.raises(ValueError, match="dict"):
            await rt.publish("room:lobby", "not a dict")  # type: ignore[arg-type]
    finally:
        await rt.hub.close()


async def test_init_app_later_and_server_side_publish_reaches_subscribers() -> None:
    rt = Hubbub(settings=Settings(jwt_secret=SECRET))
    app = host_app()
    rt.init_app(app, url_prefix="/live")
    token = make_token("bob")
    async with serving(app) as url, \
            ws_connect(f"{url.replace('http', 'ws')}/live/ws/notifications?token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        sent = await rt.notify("bob", {"message": "order shipped"})
        got = await recv_until(ws, "notification")
    assert got["id"] == sent and got["data"] == {"message": "order shipped"} and got["sender"] is None
