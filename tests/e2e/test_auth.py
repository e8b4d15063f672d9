"""Every way in (header, query token, auth frame, ticket) and every way out; see also test_auth_config."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

import hubbub.auth
from tests.conftest import SECRET, LiveServer, make_token
from tests.e2e.clients import (
    bearer,
    body_json,
    recv_close,
    recv_json,
    recv_until,
    sse_connect,
    ws_connect,
    ws_rejected,
)

OTHER_SECRET = "another-secret-that-is-also-long-enough-for-hs256"


def bad_token(kind: str) -> str:
    exp = int(time.time()) + 600
    if kind == "expired":
        return make_token("alice", ttl_s=-60)
    if kind == "wrong_signature":
        return make_token("alice", secret=OTHER_SECRET)
    if kind == "alg_none":
        return jwt.encode({"sub": "alice", "exp": exp}, None, algorithm="none")  # type: ignore[arg-type]
    if kind == "missing_sub":
        return jwt.encode({"exp": exp}, SECRET, algorithm="HS256")
    if kind == "missing_exp":
        return jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    claims: dict[str, object] = {"sub": "alice", "exp": exp}
    extra: dict[str, dict[str, object]] = {
        "not_yet_valid": {"nbf": exp}, "scope_not_string": {"scope": ["notify"]},
        "rooms_not_list": {"rooms": "lobby"}, "sub_too_long": {"sub": "a" * 129},
        "sub_surrogate": {"sub": "ali\ud800ce"},  # not UTF-8: breaks every frame naming the user
    }
    if kind in extra:
        claims.update(extra[kind])
        return jwt.encode(claims, SECRET, algorithm="HS256")
    assert kind == "garbage"
    return "not.a.jwt"


BAD_TOKENS = ["expired", "wrong_signature", "alg_none", "missing_sub", "missing_exp", "garbage",
              "not_yet_valid", "scope_not_string", "rooms_not_list", "sub_too_long", "sub_surrogate"]


def assert_unauthorized(status: int, body: object, headers: object) -> None:
    assert status == 401
    assert isinstance(body, dict) and body["error"] == "unauthorized"
    assert isinstance(body["detail"], str) and body["detail"]
    assert headers["WWW-Authenticate"].startswith("Bearer")  # type: ignore[index]


# -- accepted -------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["header", "query"])
async def test_ws_token_header_or_query_accepted_welcome(live_server: LiveServer, via: str) -> None:
    token = live_server.token("alice")
    url, kwargs = f"{live_server.ws_url}/ws/chat?room=lobby", {"additional_headers": bearer(token)}
    if via == "query":
        url, kwargs = f"{url}&token={token}", {}
    async with ws_connect(url, **kwargs) as ws:
        welcome = await recv_json(ws)
    assert welcome == {"type": "welcome", "channel": "room:lobby", "user": "alice",
                       "recovered": None, "heartbeat": live_server.settings.heartbeat_interval_s}


@pytest.mark.parametrize("via", ["header", "query"])
async def test_sse_token_header_or_query_accepted_welcome(live_server: LiveServer, via: str) -> None:
    token = live_server.token("alice")
    path, headers = "/sse/chat?room=lobby", bearer(token)
    if via == "query":
        path, headers = f"{path}&token={token}", {}
    async with live_server.http() as client, sse_connect(client, path, headers=headers) as sse:
        assert sse.response.status_code == 200
        welcome = await sse.next_json()
    assert (welcome["type"], welcome["user"]) == ("welcome", "alice")


async def test_http_header_token_wins_over_query_token(live_server: LiveServer) -> None:
    async with live_server.http() as client:
        reply = await client.post("/api/rooms/lobby/messages?token=garbage", content=b"hi",
                                  headers=bearer(live_server.token("alice")))
    assert reply.status_code == 202


async def test_ws_auth_frame_valid_token_welcome(live_server: LiveServer) -> None:
    async with ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby") as ws:
        await ws.send(json.dumps({"type": "auth", "token": live_server.token("carol")}))
        welcome = await recv_json(ws)
        assert (welcome["type"], welcome["user"]) == ("welcome", "carol")
        await ws.send('{"type":"ping"}')
        assert await recv_until(ws, "pong") == {"type": "pong"}


@pytest.mark.parametrize("first", ['{"type":"ping"}', "not json",
                                   '{"type":"chat","text":"hi"}', '{"type":"auth"}'])
async def test_ws_auth_frame_wrong_first_frame_closes_4401(live_server: LiveServer, first: str) -> None:
    async with ws_connect(f"{live_server.ws_url}/ws/notifications") as ws:
        await ws.send(first)
        code, _ = await recv_close(ws)
    assert code == 4401


@pytest.mark.parametrize("kind", BAD_TOKENS)
async def test_ws_auth_frame_bad_token_closes_4401(live_server: LiveServer, kind: str) -> None:
    async with ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby") as ws:
        await ws.send(json.dumps({"type": "auth", "token": bad_token(kind)}))
        code, _ = await recv_close(ws)
    assert code == 4401


async def test_ws_auth_frame_room_not_allowed_closes_4403(live_server: LiveServer) -> None:
    token = live_server.token("alice", rooms=["general"])
    async with ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby") as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        code, _ = await recv_close(ws)
    assert code == 4403


# -- rejected -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "ws", "sse"])
@pytest.mark.parametrize("kind", BAD_TOKENS)
async def test_bad_token_401_json_with_www_authenticate(
    live_server: LiveServer, kind: str, transport: str,
) -> None:
    """WebSocket: refused before the upgrade, so the client sees the HTTP 401 itself."""
    token = bad_token(kind)
    headers: Any
    if transport == "ws":
        response = await ws_rejected(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}")
        status, body, headers = response.status_code, body_json(response), response.headers
    else:
        path = "/api/rooms/lobby/messages" if transport == "http" else "/sse/notifications"
        async with live_server.http() as client:
            reply = await client.get(path, headers=bearer(token))
        status, body, headers = reply.status_code, reply.json(), reply.headers
    assert_unauthorized(status, body, headers)
    if kind == "expired":
        assert body["detail"] == "token expired"


@pytest.mark.parametrize("path", ["/sse/chat?room=lobby", "/sse/notifications",
                                  "/api/rooms/lobby/presence", "/api/rooms/lobby/messages"])
async def test_http_and_sse_without_credentials_401(live_server: LiveServer, path: str) -> None:
    async with live_server.http() as client:
        reply = await client.get(path)
    assert_unauthorized(reply.status_code, reply.json(), reply.headers)


async def test_rooms_claim_forbids_other_rooms_403_everywhere(live_server: LiveServer) -> None:
    token = live_server.token("alice", rooms=["general", "team-*"])
    response = await ws_rejected(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}")
    assert (response.status_code, body_json(response)["error"]) == (403, "forbidden")
    async with live_server.http() as client:
        for method, path in [("GET", "/sse/chat?room=lobby"), ("POST", "/api/rooms/lobby/messages"),
                             ("GET", "/api/rooms/lobby/messages"), ("GET", "/api/rooms/lobby/presence")]:
            reply = await client.request(method, path, content=b"hi", headers=bearer(token))
            assert (reply.status_code, reply.json()["error"]) == (403, "forbidden"), path
        reply = await client.post("/api/rooms/team-a/messages", content=b"hi", headers=bearer(token))
        assert reply.status_code == 202  # the glob allows it
    async with ws_connect(f"{live_server.ws_url}/ws/chat?room=general&token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"


async def test_rooms_claim_empty_list_allows_no_room(live_server: LiveServer) -> None:
    token = live_server.token("alice", rooms=[])
    response = await ws_rejected(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}")
    assert response.status_code == 403


async def test_notifications_post_without_notify_scope_403(live_server: LiveServer) -> None:
    async with live_server.http() as client:
        reply = await client.post("/api/notifications", json={"user": "bob", "data": {}},
                                  headers=bearer(live_server.token("alice", scope="chat")))
    assert (reply.status_code, reply.json()["error"]) == (403, "forbidden")


# -- expiry during a live connection --------------------------------------------------


async def test_ws_token_expiring_while_connected_closes_4401(live_server: LiveServer) -> None:
    token = live_server.token("alice", ttl_s=1.5)
    async with ws_connect(f"{live_server.ws_url}/ws/notifications?token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        code, _ = await recv_close(ws, timeout=5)
    assert code == 4401


async def test_sse_token_expiring_while_connected_ends_stream(live_server: LiveServer) -> None:
    token = live_server.token("alice", ttl_s=1.5)
    async with live_server.http() as client, \
            sse_connect(client, f"/sse/notifications?token={token}") as sse:
        assert (await sse.next_json())["type"] == "welcome"
        assert await sse.next(timeout=5) is None


# -- tickets ----------------------------------------------------------------------------


async def _ticket(server: LiveServer, token: str) -> str:
    async with server.http() as client:
        reply = await client.post("/auth/ticket", headers=bearer(token))
    assert reply.status_code == 200
    body = reply.json()
    assert body["expires_in"] == 30 and isinstance(body["ticket"], str)
    return body["ticket"]  # type: ignore[no-any-return]


async def test_ticket_accepted_once_on_websocket_then_401(live_server: LiveServer) -> None:
    ticket = await _ticket(live_server, live_server.token("alice"))
    url = f"{live_server.ws_url}/ws/chat?room=lobby&ticket={ticket}"
    async with ws_connect(url) as ws:
        assert (await recv_json(ws))["user"] == "alice"
    response = await ws_rejected(url)
    assert_unauthorized(response.status_code, body_json(response), response.headers)


async def test_ticket_accepted_once_on_sse_then_401(live_server: LiveServer) -> None:
    ticket = await _ticket(live_server, live_server.token("bob"))
    async with live_server.http() as client:
        async with sse_connect(client, f"/sse/notifications?ticket={ticket}") as sse:
            assert (await sse.next_json())["user"] == "bob"
        reply = await client.get(f"/sse/notifications?ticket={ticket}")
    assert_unauthorized(reply.status_code, reply.json(), reply.headers)


async def test_ticket_unknown_rejected_401(live_server: LiveServer) -> None:
    response = await ws_rejected(f"{live_server.ws_url}/ws/notifications?ticket=no-such-ticket")
    assert_unauthorized(response.status_code, body_json(response), response.headers)


async def test_ticket_expired_rejected_401(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hubbub.auth, "TICKET_TTL_S", -1)  # issued already past its lifetime
    ticket = await _ticket(live_server, live_server.token("alice"))
    async with live_server.http() as client:
        reply = await client.get(f"/sse/notifications?ticket={ticket}")
    assert_unauthorized(reply.status_code, reply.json(), reply.headers)


async def test_ticket_keeps_room_claims_forbidden_403(live_server: LiveServer) -> None:
    ticket = await _ticket(live_server, live_server.token("alice", rooms=["general"]))
    response = await ws_rejected(f"{live_server.ws_url}/ws/chat?room=lobby&ticket={ticket}")
    assert response.status_code == 403


async def test_ticket_request_without_bearer_401(live_server: LiveServer) -> None:
    async with live_server.http() as client:
        reply = await client.post("/auth/ticket")
    assert_unauthorized(reply.status_code, reply.json(), reply.headers)
