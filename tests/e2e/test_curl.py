"""curl as the client: a bare ``curl -d`` POST and a ``curl -N`` SSE read, as subprocesses."""

from __future__ import annotations

import json

from tests.conftest import LiveServer
from tests.e2e.clients import (
    curl_stream,
    recv_json,
    recv_until,
    run_curl,
    sse_connect,
    ws_connect,
)


async def curl_post(server: LiveServer, text: str, token: str) -> tuple[int, dict[str, object]]:
    """``curl -d TEXT``: the form content type, a raw body. (HTTP status, JSON reply)."""
    code, out, err = await run_curl(
        "-d", text, "-H", f"Authorization: Bearer {token}", "--write-out", "\n%{http_code}",
        f"{server.url}/api/rooms/lobby/messages",
    )
    assert code == 0, err
    body, _, status = out.decode().rpartition("\n")
    return int(status), json.loads(body)


async def test_curl_bare_data_post_202_id_delivered_to_websocket(live_server: LiveServer) -> None:
    token = live_server.token("alice")
    async with ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={live_server.token('bob')}") as ws:
        await recv_json(ws)
        status, reply = await curl_post(live_server, "hello from curl", token)
        assert status == 202 and set(reply) == {"id"}
        message = await recv_until(ws, "chat")
    assert (message["id"], message["text"], message["sender"]) == (reply["id"], "hello from curl", "alice")


async def test_curl_n_sse_sees_curl_post_with_same_id_as_websocket_and_httpx(
    live_server: LiveServer,
) -> None:
    token = live_server.token("carol")
    async with live_server.http() as client, \
            curl_stream(f"{live_server.url}/sse/chat?room=lobby&token={token}") as curl, \
            sse_connect(client, f"/sse/chat?room=lobby&token={token}") as sse, \
            ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        assert (await sse.next_json())["type"] == "welcome"
        first = await curl.line()
        assert first is not None and first.startswith(":"), "a comment line first"
        welcome_id, welcome = await curl.until_data("welcome")
        assert (welcome_id, welcome["user"], welcome["recovered"]) == (None, "carol", None)
        status, reply = await curl_post(live_server, "hello everyone", live_server.token("alice"))
        assert status == 202
        curl_id, via_curl = await curl.until_data("chat")
        via_ws = await recv_until(ws, "chat")
        via_sse = await sse.until("chat")
    assert curl_id == via_curl["id"] == via_ws["id"] == via_sse["id"] == reply["id"]
    assert via_curl == via_ws == via_sse
    assert via_curl["text"] == "hello everyone"


async def test_curl_n_sse_resumes_with_last_event_id_header(live_server: LiveServer) -> None:
    ids = []
    for text in ("one", "two", "three"):
        status, reply = await curl_post(live_server, text, live_server.token("alice"))
        assert status == 202
        ids.append(reply["id"])
    async with curl_stream("-H", f"Last-Event-ID: {ids[0]}", "-H",
                           f"Authorization: Bearer {live_server.token('carol')}",
                           f"{live_server.url}/sse/chat?room=lobby") as curl:
        _, welcome = await curl.until_data("welcome")
        assert welcome["recovered"] is True
        replayed = [await curl.until_data("chat") for _ in ids[1:]]
    assert [(i, m["text"]) for i, m in replayed] == [(ids[1], "two"), (ids[2], "three")]


async def test_curl_without_token_401_with_www_authenticate(live_server: LiveServer) -> None:
    code, out, err = await run_curl("-i", "-d", "hi", f"{live_server.url}/api/rooms/lobby/messages")
    assert code == 0, err
    head, _, body = out.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert status_line.split()[1] == "401"
    assert headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["error"] == "unauthorized"


async def test_curl_post_with_rooms_claim_elsewhere_403(live_server: LiveServer) -> None:
    status, reply = await curl_post(live_server, "hi", live_server.token("alice", rooms=["general"]))
    assert (status, reply["error"]) == (403, "forbidden")
