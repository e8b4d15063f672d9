"""The worked example of docs/embedding.md, end to end: a Quart app with its own ``app``
package and cookie login, hubbub at /rt, a hook that refuses and keeps messages in SQLite."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from tests.e2e.clients import recv_json, recv_until, sse_connect
from tests.example_server import example_server


async def signed_in(client: httpx.AsyncClient, user: str) -> str:
    """Signs in through the app's own form; the Cookie header its session is in."""
    reply = await client.post("/login", data={"user": user})
    assert reply.status_code == 302
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


async def test_example_chat_by_cookie_login_through_the_hook_under_rt(tmp_path: Path) -> None:
    async with example_server(tmp_path / "chat.sqlite3") as example, \
            httpx.AsyncClient(base_url=example.url, timeout=10) as alice, \
            httpx.AsyncClient(base_url=example.url, timeout=10) as bob:
        assert "Sign in" in (await alice.get("/")).text  # the app's own page
        alice_cookie = await signed_in(alice, "alice")
        await signed_in(bob, "bob")  # the SSE request below carries bob's cookie from his client
        assert "Signed in as <b id=\"me\">alice</b>" in (await alice.get("/")).text
        ws_url = example.url.replace("http", "ws")
        async with connect(f"{ws_url}/rt/ws/chat?room=lobby",
                           additional_headers={"Cookie": alice_cookie}) as ws, \
                sse_connect(bob, "/rt/sse/chat?room=lobby") as sse:
            assert (await recv_json(ws))["user"] == "alice"  # no token: the session cookie
            assert (await sse.next_json())["user"] == "bob"
            posted = await bob.post("/rt/api/rooms/lobby/messages", content="hello alice",
                                    headers={"Content-Type": "text/plain"})
            assert posted.status_code == 202
            got = await recv_until(ws, "chat")
            assert (got["sender"], got["text"]) == ("bob", "hello alice")
            await ws.send('{"type":"chat","text":"hi bob","ref":"1"}')
            assert (await recv_until(ws, "ack"))["ref"] == "1"
            while (event := await sse.next_json())["type"] != "chat" or event["sender"] != "alice":
                pass
            assert event["text"] == "hi bob"
            await ws.send('{"type":"chat","text":"cheap spam here"}')
            refused = await recv_until(ws, "error")
            assert (refused["code"], refused["detail"]) == ("refused", "that word is not welcome here")
            refused_post = await bob.post("/rt/api/rooms/lobby/messages", json={"text": "SPAM"})
            assert refused_post.status_code == 422
        kept = (await alice.get("/kept")).json()["messages"]
        assert [(m["user"], m["text"]) for m in kept] == [("bob", "hello alice"), ("alice", "hi bob")]
        async with httpx.AsyncClient(base_url=example.url) as stranger:
            reply = await stranger.post("/rt/api/rooms/lobby/messages", json={"text": "anonymous"})
            assert reply.status_code == 401
            demo = await stranger.post("/rt/auth/demo-token", json={"user": "alice"})
            assert demo.status_code == 403  # no way around the app's own login


async def test_example_host_websocket_keeps_compression_and_host_handles_sigterm(tmp_path: Path) -> None:
    async with example_server(tmp_path / "chat.sqlite3") as example, \
            httpx.AsyncClient(base_url=example.url, timeout=10) as client:
        cookie = await signed_in(client, "carol")
        ws_url = example.url.replace("http", "ws")
        async with connect(f"{ws_url}/ws/clock", compression="deflate") as clock:
            assert "permessage-deflate" in (clock.response.headers.get("Sec-WebSocket-Extensions") or "")
            async with asyncio.timeout(5):
                assert "T" in str(await clock.recv())  # an ISO time from the app's own socket
        async with connect(f"{ws_url}/rt/ws/notifications", additional_headers={"Cookie": cookie}) as ws:
            assert (await recv_json(ws))["user"] == "carol"
            example.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                await ws.wait_closed()
            assert ws.close_code == 1012  # hubbub saw the server stop: clients resume elsewhere
        async with asyncio.timeout(15):
            await example.process.wait()
    assert example.process.returncode == 0, example.output
    assert "example: SIGTERM received, shutting down" in example.output  # the app's own handler
    assert "Traceback" not in example.output
