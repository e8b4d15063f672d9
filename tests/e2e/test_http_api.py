"""The plain HTTP API: posting, history, presence, health, metrics, the site, and bad input."""

from __future__ import annotations

import asyncio
import gc
import re
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import hubbub
from tests.conftest import LiveServer, ServerFactory
from tests.e2e.clients import (
    bearer,
    eventually,
    next_line,
    recv_json,
    recv_until,
    sse_connect,
    ws_connect,
)

MESSAGES = "/api/rooms/lobby/messages"


async def post(server: LiveServer, body: bytes, content_type: str | None, user: str = "alice",
               path: str = MESSAGES) -> tuple[int, dict[str, Any]]:
    headers = bearer(server.token(user))
    if content_type is not None:
        headers["Content-Type"] = content_type
    async with server.http() as client:
        reply = await client.post(path, content=body, headers=headers)
    return reply.status_code, reply.json()


async def history(server: LiveServer, query: str = "") -> dict[str, Any]:
    async with server.http() as client:
        reply = await client.get(f"{MESSAGES}{query}", headers=bearer(server.token("reader")))
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    return reply.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(("body", "content_type", "text"), [
    (b'{"text":"from json","extra":1}', "application/json", "from json"),
    (b'{"text":"with charset"}', "application/json; charset=utf-8", "with charset"),
    ("plain text, ünïcode".encode(), "text/plain; charset=utf-8", "plain text, ünïcode"),
    (b"hi there & more=stuff", "application/x-www-form-urlencoded", "hi there & more=stuff"),
    (b"text=hello%20form", "application/x-www-form-urlencoded", "hello form"),
    (b"no content type", None, "no content type"),
])
async def test_post_message_body_kinds_202_id_delivered_and_kept(
    live_server: LiveServer, body: bytes, content_type: str | None, text: str,
) -> None:
    token = live_server.token("bob")
    async with ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as ws:
        await recv_json(ws)
        status, reply = await post(live_server, body, content_type)
        assert status == 202 and set(reply) == {"id"}
        message = await recv_until(ws, "chat")
    assert (message["id"], message["text"], message["sender"]) == (reply["id"], text, "alice")
    assert set(message) == {"id", "type", "text", "channel", "sender", "timestamp"}
    assert (await history(live_server))["messages"] == [message]


@pytest.mark.parametrize(("body", "content_type"), [
    (b"", "text/plain"), (b"   ", "text/plain"), (b"", "application/x-www-form-urlencoded"),
    (b"text=", "application/x-www-form-urlencoded"), (b"\xff\xfe", "text/plain"),
    (b"{not json", "application/json"), (b'["text"]', "application/json"),
    (b'{"text":""}', "application/json"), (b'{"text":7}', "application/json"), (b"{}", "application/json"),
])
async def test_post_message_bad_body_400(live_server: LiveServer, body: bytes, content_type: str) -> None:
    status, reply = await post(live_server, body, content_type)
    assert (status, reply["error"]) == (400, "bad_request")
    assert isinstance(reply["detail"], str) and reply["detail"]


@pytest.mark.parametrize("content_type", ["application/xml", "multipart/form-data; boundary=x",
                                          "image/png"])
async def test_post_message_wrong_content_type_415(live_server: LiveServer, content_type: str) -> None:
    status, reply = await post(live_server, b"<text>hi</text>", content_type)
    assert (status, reply["error"]) == (415, "unsupported_media_type")


async def test_post_message_too_large_413_with_length_or_chunked(server_factory: ServerFactory) -> None:
    server = await server_factory({"MAX_MESSAGE_BYTES": "1024"})
    status, reply = await post(server, b"x" * 1025, "text/plain")
    assert (status, reply["error"]) == (413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"y" * 512

    async with server.http() as client:
        chunked = await client.post(MESSAGES, content=chunks(),
                                    headers={**bearer(server.token("alice")), "Content-Type": "text/plain"})
    assert (chunked.status_code, chunked.json()["error"]) == (413, "too_large")
    assert (await history(server))["messages"] == []


async def test_post_message_methods_other_than_get_and_post(live_server: LiveServer) -> None:
    async with live_server.http() as client:
        put = await client.put(MESSAGES, content=b"hi", headers=bearer(live_server.token("alice")))
        options = await client.options(MESSAGES)
    assert (put.status_code, put.json()["error"]) == (405, "method_not_allowed")
    assert {"GET", "POST"} <= set(put.headers["Allow"].split(", "))
    assert options.status_code == 200 and "POST" in options.headers["Allow"].split(", ")
    assert put.headers["X-Content-Type-Options"] == options.headers["X-Content-Type-Options"] == "nosniff"


async def test_post_message_to_a_nested_path_is_404(live_server: LiveServer) -> None:
    status, reply = await post(live_server, b"hi", "text/plain", path="/api/rooms/lobby/x/messages")
    assert (status, reply["error"]) == (404, "not_found")


async def test_post_message_client_gone_mid_body_leaves_the_server_serving(
        live_server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", live_server.port)
    head = (f"POST {MESSAGES} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {live_server.token('alice')}\r\n"
            "Content-Type: text/plain\r\nContent-Length: 100\r\n\r\n").encode()
    writer.write(head + b"only ten b")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    assert (await post(live_server, b"still here", "text/plain"))[0] == 202
    assert [m["text"] for m in (await history(live_server))["messages"]] == ["still here"]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_post_message_past_burst_429_with_retry_after(live_server: LiveServer) -> None:
    for i in range(live_server.settings.rate_limit_burst):
        assert (await post(live_server, f"m{i}".encode(), "text/plain"))[0] == 202
    async with live_server.http() as client:
        reply = await client.post(MESSAGES, content=b"one too many",
                                  headers=bearer(live_server.token("alice")))
    assert (reply.status_code, reply.json()["error"]) == (429, "rate_limited")
    assert int(reply.headers["Retry-After"]) >= 1
    assert (await post(live_server, b"bob has his own bucket", "text/plain", user="bob"))[0] == 202


async def test_history_latest_n_and_since_with_limit_oldest_first(live_server: LiveServer) -> None:
    ids = [(await post(live_server, f"m{i}".encode(), "text/plain"))[1]["id"] for i in range(5)]
    whole = await history(live_server)
    assert [m["id"] for m in whole["messages"]] == ids and whole["recovered"] is True
    latest = await history(live_server, "?limit=2")
    assert [m["text"] for m in latest["messages"]] == ["m3", "m4"]
    after = await history(live_server, f"?since={ids[1]}&limit=2")
    assert [m["id"] for m in after["messages"]] == ids[2:4] and after["recovered"] is True
    assert (await history(live_server, f"?since={ids[4]}"))["messages"] == []


@pytest.mark.parametrize("since", ["garbage", "0badc0de-1", "0badc0de-%C2%B2"])
async def test_history_stale_since_recovered_false(live_server: LiveServer, since: str) -> None:
    await post(live_server, b"kept", "text/plain")
    page = await history(live_server, f"?since={since}")
    assert page["recovered"] is False


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1.5", "", "10001", "99999999999999999999",
                                   "%C2%B2", "9" * 5000])  # "²" and 5000 digits: isdigit() yes, int() no
async def test_history_bad_limit_400(live_server: LiveServer, limit: str) -> None:
    async with live_server.http() as client:
        reply = await client.get(f"{MESSAGES}?limit={limit}", headers=bearer(live_server.token("a")))
    assert (reply.status_code, reply.json()["error"]) == (400, "bad_request")


@pytest.mark.parametrize("query", ["", "?limit=50", "?limit=200"])  # the default, the demo, React
async def test_history_limit_over_history_size_clamped_not_400(server_factory, query: str) -> None:
    # With HISTORY_SIZE under 100, a plain GET (default limit 100) used to be a 400.
    server = await server_factory({"HISTORY_SIZE": "20"})
    for n in range(25):
        await server.hub.publish("room:lobby", {"type": "chat", "text": f"m{n}"}, sender="a")
    async with server.http() as client:
        reply = await client.get(f"{MESSAGES}{query}", headers=bearer(server.token("a")))
    assert reply.status_code == 200
    texts = [m["text"] for m in reply.json()["messages"]]
    assert texts == [f"m{n}" for n in range(5, 25)]


async def presence(server: LiveServer, room: str = "lobby") -> dict[str, Any]:
    async with server.http() as client:
        reply = await client.get(f"/api/rooms/{room}/presence", headers=bearer(server.token("probe")))
    assert reply.status_code == 200
    return reply.json()  # type: ignore[no-any-return]


async def test_presence_counts_each_users_websocket_and_sse_connections(live_server: LiveServer) -> None:
    def url(user: str) -> str:
        return f"{live_server.ws_url}/ws/chat?room=lobby&token={live_server.token(user)}"

    assert await presence(live_server) == {"room": "lobby", "users": []}
    async with live_server.http() as client, ws_connect(url("alice")) as one, \
            ws_connect(url("alice")) as two:
        await recv_json(one)
        await recv_json(two)
        path = "/sse/chat?room=lobby"
        async with sse_connect(client, path, headers=bearer(live_server.token("alice"))) as a, \
                sse_connect(client, path, headers=bearer(live_server.token("bob"))) as b:
            await a.next_json()
            await b.next_json()
            expected = {"room": "lobby", "users": [{"id": "alice", "connections": 3},
                                                   {"id": "bob", "connections": 1}]}

            async def counted() -> bool:
                return await presence(live_server) == expected

            await eventually(counted)
        after_sse = {"room": "lobby", "users": [{"id": "alice", "connections": 2}]}

        async def sse_gone() -> bool:
            return await presence(live_server) == after_sse

        await eventually(sse_gone)
    assert (await presence(live_server, "elsewhere"))["users"] == []


async def test_healthz_200_ok_memory_backend(live_server: LiveServer) -> None:
    async with live_server.http() as client:
        reply = await client.get("/healthz")
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert (reply.json()["status"], reply.json()["backend"]) == ("ok", "memory")


async def test_healthz_alive_readyz_ready_both_with_the_version(live_server: LiveServer) -> None:
    async with live_server.http() as client:
        alive, ready = await client.get("/healthz"), await client.get("/readyz")
        live_server.services.drain()  # what SIGTERM does first
        alive_draining, ready_draining = await client.get("/healthz"), await client.get("/readyz")
    assert (alive.status_code, ready.status_code) == (200, 200)
    assert alive.json()["version"] == ready.json()["version"] == hubbub.__version__
    assert alive_draining.status_code == 200 and alive_draining.json()["draining"] is True
    assert (ready_draining.status_code, ready_draining.json()["status"]) == (503, "unavailable")
    assert ready_draining.headers["Retry-After"] == "2"


async def test_metrics_prometheus_text_counts_published(live_server: LiveServer) -> None:
    async def scrape() -> dict[tuple[str, str], float]:
        async with live_server.http() as client:
            reply = await client.get("/metrics")
        assert reply.status_code == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=")
        families = list(text_string_to_metric_families(reply.text))
        assert all(family.documentation for family in families)  # HELP text on every one
        return {(s.name, ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))): s.value
                for family in families for s in family.samples}

    before = await scrape()
    await post(live_server, b"counted", "text/plain")
    after = await scrape()
    key = ("hubbub_messages_published_total", "channel_kind=room,source=http")
    assert after[key] == before.get(key, 0) + 1


async def test_metrics_token_protects_metrics(server_factory: ServerFactory) -> None:
    server = await server_factory({"METRICS_TOKEN": "scrape-me-0123456789"})
    async with server.http() as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status_code == 401
        allowed = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"})
    assert allowed.status_code == 200 and "hubbub_build_info" in allowed.text


@pytest.mark.parametrize("path", ["/nope", "/api/rooms", "/api/rooms/lobby/nope", "/static/nope.js"])
async def test_unknown_path_404_json(live_server: LiveServer, path: str) -> None:
    async with live_server.http() as client:
        reply = await client.get(path)
    assert reply.status_code == 404
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json()["error"] == "not_found"


async def test_http_bad_room_name_400(live_server: LiveServer) -> None:
    status, reply = await post(live_server, b"hi", "text/plain", path="/api/rooms/bad%20room/messages")
    assert (status, reply["error"]) == (400, "bad_request")


@pytest.mark.parametrize(("path", "kind"), [("/", "text/html"), ("/static/hubbub.js", "javascript")])
async def test_site_page_and_client_library_served(live_server: LiveServer, path: str, kind: str) -> None:
    async with live_server.http() as client:
        reply = await client.get(path)
    assert reply.status_code == 200 and kind in reply.headers["Content-Type"]


async def get_and_hang_up(port: int, path: str) -> int:
    """A bare HTTP/1.1 GET that closes the socket the moment the body is in, as browsers may."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
        length = re.search(r"content-length: *(\d+)", head)
        assert length is not None, head
        await reader.readexactly(int(length.group(1)))
        return int(head.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("path", ["/", "/static/hubbub.js"])
async def test_site_files_clients_hanging_up_leave_no_file_open(live_server: LiveServer, path: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with asyncio.timeout(30):
            for _ in range(300):
                assert await get_and_hang_up(live_server.port, path) == 200
            await asyncio.to_thread(gc.collect)  # behind any work the server queued in the executor
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == [], f"{len(leaked)} file(s) left open, e.g. {leaked[0]}"


def raw_events(raw: list[str]) -> list[list[str]]:
    """The raw lines read so far, split into blocks at blank lines."""
    blocks: list[list[str]] = [[]]
    for line in raw:
        if line == "":
            blocks.append([])
        else:
            blocks[-1].append(line)
    return [b for b in blocks if b]


async def test_sse_framing_headers_comment_retry_and_one_data_line(live_server: LiveServer) -> None:
    token = live_server.token("alice")
    async with live_server.http() as client, \
            sse_connect(client, f"/sse/chat?room=lobby&token={token}") as sse:
        headers = sse.response.headers
        assert headers["Content-Type"].split(";")[0] == "text/event-stream"
        assert headers["Cache-Control"] == "no-cache" and headers["X-Accel-Buffering"] == "no"
        welcome = await sse.next()
        assert welcome is not None and welcome.id is None and welcome.retry is not None
        assert sse.raw[0].startswith(":"), "a comment line first, to flush proxies"
        sent = [await live_server.hub.publish("room:lobby", {"type": "chat", "text": text}, sender="bot")
                for text in ("two\nlines\r\nhere", "ünï €")]
        got = [await sse.until("chat") for _ in sent]
    assert [m["id"] for m in got] == [m.id for m in sent]
    assert got[0]["text"] == "two\nlines\r\nhere"
    assert not [line for line in sse.raw if line.startswith("event")]
    blocks = raw_events(sse.raw)
    assert [line.split(":")[0] for line in blocks[1]] == ["data", "retry"]  # the welcome
    assert all(sum(line.startswith("data:") for line in b) <= 1 for b in blocks)
    assert [b for b in blocks if b[0].startswith("id:")] == [[f"id: {m.id}", f"data: {m.json}"] for m in sent]


async def test_sse_heartbeat_comment_every_interval(server_factory: ServerFactory) -> None:
    server = await server_factory({"HEARTBEAT_INTERVAL": "0.2"})
    async with server.http() as client, \
            sse_connect(client, "/sse/notifications", headers=bearer(server.token("alice"))) as sse:
        assert (await sse.next_json())["heartbeat"] == 0.2
        lines = [await next_line(sse, 2) for _ in range(4)]
    assert None not in lines, "the stream ended"
    assert [line[:1] for line in lines if line is not None] == [":", "", ":", ""]
