"""Publishing from a backend: /api/publish by API key and by scoped JWT, batches, curl-simple
notifications, Idempotency-Key (one process and two on Redis, a lost reply), the Python
client, the Redis emitter and the command line, each seen by a WebSocket and an SSE
subscriber with the same ids."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from hubbub.client import (
    AsyncPublisher,
    AsyncRedisEmitter,
    Publisher,
    RateLimited,
    RedisEmitter,
    Unauthorized,
)
from tests.conftest import LiveServer, ServerFactory, make_token
from tests.e2e.clients import SSEStream, bearer, recv_json, recv_until, sse_connect, ws_connect

ROOT = Path(__file__).resolve().parents[2]
ORDERS_KEY = "orders-secret-0123456789abcdef0123"
BILLING_KEY = "billing-secret-0123456789abcdef012"
KEYS = {"API_KEYS": f"orders:{ORDERS_KEY},billing:{BILLING_KEY}"}
REDIS_URL = "redis://127.0.0.1:6379/0"


@asynccontextmanager
async def subscribers(server: LiveServer, path_ws: str,
                      path_sse: str) -> AsyncIterator[tuple[Any, SSEStream]]:
    """A WebSocket and an SSE subscriber, past their welcome."""
    async with server.http() as client, ws_connect(f"{server.ws_url}{path_ws}") as ws, \
            sse_connect(client, path_sse) as sse:
        assert (await recv_json(ws))["type"] == "welcome"
        assert (await sse.next_json())["type"] == "welcome"
        yield ws, sse


def orders_room(server: LiveServer, user: str = "watcher") -> tuple[str, str]:
    token = make_token(user)
    return f"/ws/chat?room=orders&token={token}", f"/sse/chat?room=orders&token={token}"


def inbox(user: str) -> tuple[str, str]:
    token = make_token(user)
    return f"/ws/notifications?token={token}", f"/sse/notifications?token={token}"


async def both_get(ws: Any, sse: SSEStream, kind: str) -> dict[str, Any]:
    """The next ``kind`` event on both subscribers: the same message."""
    on_ws, on_sse = await recv_until(ws, kind), await sse.until(kind)
    assert on_ws == on_sse
    return on_ws


EVENT = {"channel": "room:orders", "type": "order_updated", "data": {"id": 42, "status": "shipped"}}


@pytest.mark.parametrize("credentials", [{"X-API-Key": ORDERS_KEY},
                                         {"Authorization": f"Bearer {ORDERS_KEY}"}])
async def test_publish_by_api_key_structured_event_reaches_ws_and_sse(
        server_factory: ServerFactory, credentials: dict[str, str]) -> None:
    server = await server_factory(KEYS)
    async with subscribers(server, *orders_room(server)) as (ws, sse), server.http() as client:
        reply = await client.post("/api/publish", json=EVENT, headers=credentials)
        assert reply.status_code == 202
        got = await both_get(ws, sse, "order_updated")
    assert got["id"] == reply.json()["id"]
    assert got["data"] == {"id": 42, "status": "shipped"}
    assert (got["channel"], got["sender"]) == ("room:orders", "orders")
    assert list(got) == ["id", "type", "data", "channel", "sender", "timestamp"]


async def test_publish_by_jwt_with_scope_publish_only(live_server: LiveServer) -> None:
    async with subscribers(live_server, *orders_room(live_server)) as (ws, _), live_server.http() as client:
        allowed = await client.post("/api/publish", json=EVENT,
                                    headers=bearer(live_server.token("shop", scope="publish")))
        refused = await client.post("/api/publish", json=EVENT,
                                    headers=bearer(live_server.token("shop", scope="notify")))
        got = await recv_until(ws, "order_updated")
    assert allowed.status_code == 202 and got["sender"] == "shop"
    assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")


@pytest.mark.parametrize(("change", "status"), [
    ({"type": "welcome"}, 400), ({"type": "resync"}, 400), ({"type": "ack"}, 400),
    ({"type": ""}, 400), ({"type": "no spaces"}, 400), ({"channel": "orders"}, 400),
    ({"channel": "room:bad name"}, 400), ({"extra": 1}, 400),
])
async def test_publish_malformed_event_refused(server_factory: ServerFactory, change: dict[str, Any],
                                               status: int) -> None:
    server = await server_factory(KEYS)
    async with server.http() as client:
        reply = await client.post("/api/publish", json={**EVENT, **change}, headers={"X-API-Key": ORDERS_KEY})
    assert (reply.status_code, reply.json()["error"]) == (status, "bad_request")


async def test_publish_bad_key_401_never_in_the_log(server_factory: ServerFactory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    server = await server_factory(KEYS)
    async with server.http() as client:
        wrong = await client.post("/api/publish", json=EVENT, headers={"X-API-Key": "x" * 40})
        in_url = await client.post(f"/api/publish?api_key={ORDERS_KEY}", json=EVENT)
    assert (wrong.status_code, wrong.json()["detail"]) == (401, "unknown API key")
    assert in_url.status_code == 401  # a key is taken from a header only
    assert ORDERS_KEY not in caplog.text


async def test_publish_batch_one_id_each_in_order(server_factory: ServerFactory) -> None:
    server = await server_factory(KEYS)
    batch = [{"channel": "user:bob", "type": "invoice_paid", "data": {"n": n}} for n in range(3)]
    batch.append({"channel": "broadcast", "type": "maintenance", "data": {"at": "17:00"}})
    async with subscribers(server, *inbox("bob")) as (ws, sse), server.http() as client:
        reply = await client.post("/api/publish", json=batch, headers={"X-API-Key": BILLING_KEY})
        assert reply.status_code == 202
        ids = reply.json()["ids"]
        got = [await recv_until(ws, "invoice_paid") for _ in range(3)] + [await recv_until(ws, "maintenance")]
        too_many = await client.post("/api/publish", json=batch * 26, headers={"X-API-Key": BILLING_KEY})
        empty = await client.post("/api/publish", json=[], headers={"X-API-Key": BILLING_KEY})
    assert [m["id"] for m in got] == ids
    assert [m["data"] for m in got[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert (too_many.status_code, empty.status_code) == (400, 400)


@pytest.mark.parametrize(("query", "user"), [("?user=bob", "bob"), ("?broadcast=1", "bob")])
async def test_notification_curl_simple_plain_body(server_factory: ServerFactory, query: str,
                                                   user: str) -> None:
    server = await server_factory(KEYS)
    async with subscribers(server, *inbox(user)) as (ws, sse), server.http() as client:
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            reply = await client.post(f"/api/notifications{query}", content=b"Deploy at 5",
                                      headers={"X-API-Key": ORDERS_KEY, "Content-Type": content_type})
            assert reply.status_code == 202
            got = await both_get(ws, sse, "notification")
            assert got["data"] == {"message": "Deploy at 5"} and got["sender"] is None


async def test_api_key_has_its_own_rate_limit(server_factory: ServerFactory) -> None:
    server = await server_factory({**KEYS, "API_KEY_RATE_LIMIT_BURST": "2",
                                   "API_KEY_RATE_LIMIT_PER_SECOND": "0.01"})
    async with server.http() as client:
        key = {"X-API-Key": ORDERS_KEY}
        statuses = [(await client.post("/api/publish", json=EVENT, headers=key)).status_code
                    for _ in range(3)]
        other = await client.post("/api/publish", json=EVENT, headers={"X-API-Key": BILLING_KEY})
    assert statuses == [202, 202, 429] and other.status_code == 202


# -- Idempotency-Key ----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [
    ("/api/publish", EVENT),
    ("/api/notifications", {"user": "watcher", "data": {"message": "once"}}),
    ("/api/rooms/orders/messages", {"text": "once"}),
])
async def test_idempotency_key_same_body_same_answer_delivered_once(
        server_factory: ServerFactory, path: str, body: dict[str, Any]) -> None:
    server = await server_factory(KEYS)
    ws_path, sse_path = orders_room(server) if "notifications" not in path else inbox("watcher")
    headers = {"X-API-Key": ORDERS_KEY, "Idempotency-Key": "order-42-shipped"}
    async with subscribers(server, ws_path, sse_path) as (ws, _), server.http() as client:
        first = await client.post(path, json=body, headers=headers)
        again = await client.post(path, json=body, headers=headers)
        other = await client.post(path, json={**body, "x": 1}, headers=headers)
        fresh = await client.post(path, json=body, headers={**headers, "Idempotency-Key": "another"})
        delivered = [await recv_until(ws, kind := ("notification" if "notif" in path else
                                                   "chat" if "rooms" in path else "order_updated"))]
        delivered.append(await recv_until(ws, kind))
        with pytest.raises(TimeoutError):
            await recv_until(ws, kind, timeout=0.5)  # two messages, not three
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_mismatch")
    assert [m["id"] for m in delivered] == [first.json()["id"], fresh.json()["id"]]


@pytest.mark.redis
async def test_idempotency_key_holds_across_processes(server_factory: ServerFactory,
                                                      redis_prefix: str) -> None:
    env = {**KEYS, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": redis_prefix}
    first, second = await server_factory(env), await server_factory(env)
    headers = {"X-API-Key": ORDERS_KEY, "Idempotency-Key": "k-1"}
    async with subscribers(first, *orders_room(first)) as (ws, _):
        async with first.http() as one, second.http() as two:
            a = await one.post("/api/publish", json=EVENT, headers=headers)
            b = await two.post("/api/publish", json=EVENT, headers=headers)
            mismatch = await two.post("/api/publish", json={**EVENT, "data": 1}, headers=headers)
        got = await recv_until(ws, "order_updated")
        with pytest.raises(TimeoutError):
            await recv_until(ws, "order_updated", timeout=0.5)
    assert a.json() == b.json() == {"id": got["id"]}
    assert mismatch.status_code == 422


class LosesFirstReply(httpx.AsyncBaseTransport):
    """Sends every request; the first reply is lost on the way back (the server did publish)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.attempts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        response = await self._inner.handle_async_request(request)
        if self.attempts == 1:
            await response.aread()
            raise httpx.ReadError("connection reset before the reply arrived", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_client_retry_after_a_lost_reply_delivers_once(server_factory: ServerFactory) -> None:
    server = await server_factory(KEYS)
    transport = LosesFirstReply()
    async with subscribers(server, *orders_room(server)) as (ws, sse), \
            AsyncPublisher(server.url, api_key=ORDERS_KEY, transport=transport) as pub:
        message_id = await pub.publish("room:orders", {"id": 7}, type="order_updated")
        got = await both_get(ws, sse, "order_updated")
        with pytest.raises(TimeoutError):
            await recv_until(ws, "order_updated", timeout=0.5)
    assert transport.attempts == 2
    assert got["id"] == message_id and got["data"] == {"id": 7}


# -- the Python client, the emitter, the command line ------------------------------------------


async def test_sync_publisher_publish_notify_broadcast_typed_errors(server_factory: ServerFactory) -> None:
    server = await server_factory({**KEYS, "API_KEY_RATE_LIMIT_BURST": "3",
                                   "API_KEY_RATE_LIMIT_PER_SECOND": "0.01"})
    async with subscribers(server, *inbox("bob")) as (ws, sse):
        with Publisher(server.url, api_key=ORDERS_KEY, retries=0) as pub:
            one = await asyncio.to_thread(pub.publish, "user:bob", {"n": 1}, type="invoice_paid")
            two = await asyncio.to_thread(pub.notify, "bob", {"message": "hi bob"})
            three = await asyncio.to_thread(pub.broadcast, {"message": "all"})
            with pytest.raises(RateLimited) as limited:
                await asyncio.to_thread(pub.broadcast, {"message": "one too many"})
        got = [await recv_until(ws, "invoice_paid"), await recv_until(ws, "notification"),
               await recv_until(ws, "notification")]
        with Publisher(server.url, api_key="not-a-key-" * 4, retries=0) as stranger:
            with pytest.raises(Unauthorized):
                await asyncio.to_thread(stranger.broadcast, "x")
    assert [m["id"] for m in got] == [one, two, three]
    assert limited.value.status == 429 and limited.value.retry_after is not None


@pytest.mark.redis
@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_redis_emitter_publishes_like_a_server(server_factory: ServerFactory, redis_prefix: str,
                                                      flavour: str) -> None:
    server = await server_factory({"REDIS_URL": REDIS_URL, "REDIS_PREFIX": redis_prefix})
    async with subscribers(server, *orders_room(server)) as (ws, sse), server.http() as client:
        via_server = await server.hub.publish("room:orders", {"type": "order_updated", "data": 0})
        if flavour == "sync":
            emitter = RedisEmitter(REDIS_URL, redis_prefix)
            emitted = await asyncio.to_thread(emitter.publish, "room:orders", {"id": 1}, type="order_updated")
            emitter.close()
        else:
            async_emitter = AsyncRedisEmitter(REDIS_URL, redis_prefix)
            emitted = await async_emitter.publish("room:orders", {"id": 1}, type="order_updated")
            await async_emitter.aclose()
        await both_get(ws, sse, "order_updated")
        got = await both_get(ws, sse, "order_updated")
        history = (await client.get(f"/api/rooms/orders/messages?since={via_server.id}",
                                    headers=bearer(make_token("x")))).json()
    assert got["id"] == emitted and got["data"] == {"id": 1} and got["sender"] is None
    assert [m["id"] for m in history["messages"]] == [emitted] and history["recovered"] is True


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    return process.returncode or 0, out.decode().strip(), err.decode()


@pytest.mark.redis
async def test_command_line_publishes_over_http_and_through_redis(
        server_factory: ServerFactory, redis_prefix: str) -> None:
    import os

    server = await server_factory({**KEYS, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": redis_prefix})
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HUBBUB_", "REDIS_"))}
    over_http = {**base, "HUBBUB_URL": server.url, "HUBBUB_API_KEY": ORDERS_KEY}
    through_redis = {**base, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": redis_prefix}
    async with subscribers(server, *inbox("bob")) as (ws, _):
        code1, id1, _ = await run_cli("publish", "user:bob", "--type", "invoice_paid", "--data", '{"n": 7}',
                                      env=over_http)
        code2, id2, _ = await run_cli("notify", "bob", "New product created", env=through_redis)
        code3, id3, _ = await run_cli("broadcast", "Deploy at 5", env=over_http)
        code4, _, err = await run_cli("publish", "lobby", "hi", env=over_http)
        got = [await recv_until(ws, "invoice_paid"), await recv_until(ws, "notification"),
               await recv_until(ws, "notification")]
    assert (code1, code2, code3) == (0, 0, 0)
    assert [m["id"] for m in got] == [id1, id2, id3]
    assert got[0]["data"] == {"n": 7} and got[2]["data"] == {"message": "Deploy at 5"}
    assert code4 == 2 and "channel" in err
