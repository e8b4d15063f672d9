"""Redis goes away and comes back while subscribers listen and a publisher keeps posting.

A private redis-server (no persistence) on a free port serves two `hypercorn`
processes. It is terminated for about two seconds and started again on the same
port, empty: a new epoch. Every POST that got 202 must reach every subscriber
(WebSocket and SSE, on both processes) exactly once and in order; every POST
refused during the outage got 503 with Retry-After and reached nobody; /readyz said
503 meanwhile; no open connection was closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from uuid import uuid4

import httpx
import pytest

from tests.backends.conftest import RedisServer, delete_keys
from tests.conftest import make_token
from tests.e2e.clients import bearer, sse_connect, ws_connect
from tests.e2e.processes import REDIS_URL, Hypercorn, LossyProxy, Recorder

pytestmark = pytest.mark.redis

OUTAGE_S = 2.0
POST_EVERY_S = 0.02
POST_TIMEOUT_S = 3.0
MAX_POSTS = 1500  # about 30 s of posting at most, whatever else happens


@dataclass
class Post:
    n: int
    server: str
    status: int | None  # None: no answer within POST_TIMEOUT_S
    id: str | None = None
    retry_after: str | None = None
    at: float = 0.0

    @property
    def text(self) -> str:
        return f"p{self.n:04d}"


class Publisher:
    """Posts p0000, p0001, … every 20 ms, alternately to each server, one at a time."""

    def __init__(self, servers: dict[str, Hypercorn], room: str) -> None:
        self.servers = servers
        self.room = room
        self.posts: list[Post] = []
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Publisher:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            async with asyncio.timeout(POST_TIMEOUT_S + 5):
                await self._task

    async def _run(self) -> None:
        token = bearer(make_token("publisher"))
        names = list(self.servers)
        async with AsyncExitStack() as stack:
            clients = {name: await stack.enter_async_context(server.http(timeout=POST_TIMEOUT_S))
                       for name, server in self.servers.items()}
            for n in range(MAX_POSTS):
                if self._stop.is_set():
                    return
                name = names[n % len(names)]
                post = Post(n, name, None, at=time.monotonic())
                try:
                    reply = await clients[name].post(f"/api/rooms/{self.room}/messages",
                                                     json={"text": post.text}, headers=token)
                    post.status = reply.status_code
                    post.retry_after = reply.headers.get("Retry-After")
                    if reply.status_code == 202:
                        post.id = reply.json()["id"]
                except httpx.TimeoutException:
                    pass
                except httpx.TransportError:
                    pass  # no answer: counted like a timeout
                self.posts.append(post)
                self._changed.set()
                await asyncio.sleep(POST_EVERY_S)

    def accepted(self, since: float = 0.0) -> list[Post]:
        return [p for p in self.posts if p.status == 202 and p.at >= since]

    async def wait_for_accepted(self, count: int, since: float, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.accepted(since)) < count:
                assert self._task is not None and not self._task.done(), "the publisher stopped"
                self._changed.clear()
                await self._changed.wait()


async def readyz(server: Hypercorn) -> httpx.Response:
    async with server.http(timeout=5) as client:
        return await client.get("/readyz")


async def until_health(server: Hypercorn, status: int, timeout: float) -> httpx.Response:
    async with asyncio.timeout(timeout):
        while True:
            reply = await readyz(server)
            if reply.status_code == status:
                return reply
            await asyncio.sleep(0.05)


def epoch_of(message_id: str) -> str:
    return message_id.rpartition("-")[0]


def seq_of(message_id: str) -> int:
    return int(message_id.rpartition("-")[2])


async def test_redis_restart_loses_no_accepted_message_and_closes_no_connection(
    private_redis: RedisServer,
) -> None:
    prefix = f"test:{uuid4().hex}:"
    env = {"REDIS_URL": private_redis.url, "REDIS_PREFIX": prefix, "HEARTBEAT_INTERVAL": "0.5",
           "RATE_LIMIT_BURST": "100000", "RATE_LIMIT_PER_SECOND": "1000"}
    servers = {"A": Hypercorn(env), "B": Hypercorn(env)}
    room = f"r{uuid4().hex[:12]}"
    async with asyncio.timeout(120), AsyncExitStack() as stack:
        for server in servers.values():
            stack.push_async_callback(server.stop)
        await asyncio.gather(*(server.start() for server in servers.values()))

        recorders: list[Recorder] = []
        sockets = []
        for name, server in servers.items():
            token = make_token(f"reader-{name}")
            ws = await stack.enter_async_context(
                ws_connect(f"{server.ws_url}/ws/chat?room={room}&token={token}"))
            sockets.append(ws)
            recorders.append(Recorder.websocket(f"ws on {name}", ws))
            client = await stack.enter_async_context(server.http())
            stream = await stack.enter_async_context(
                sse_connect(client, f"/sse/chat?room={room}", headers=bearer(token)))
            recorders.append(Recorder.sse(f"sse on {name}", stream))
        for recorder in recorders:
            stack.push_async_callback(recorder.stop)
            await recorder.wait_until(lambda r: bool(r.of_type("welcome")), what="welcome")

        publisher = await stack.enter_async_context(Publisher(servers, room))
        await publisher.wait_for_accepted(20, since=0.0, timeout=15)

        # The outage: Redis terminated, ~2 s later started again on the same port, empty.
        await private_redis.stop()
        down_at = time.monotonic()
        unhealthy = {name: await until_health(server, 503, timeout=OUTAGE_S)
                     for name, server in servers.items()}
        await asyncio.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
        up_at = time.monotonic()
        await private_redis.start()

        await publisher.wait_for_accepted(20, since=up_at, timeout=20)
        for server in servers.values():
            await until_health(server, 200, timeout=10)
        await publisher.stop()

        posts = publisher.posts
        accepted = [p for p in posts if p.status == 202]
        refused = [p for p in posts if p.status == 503]
        unanswered = [p for p in posts if p.status is None]
        expected = [p.text for p in accepted]
        for recorder in recorders:
            await recorder.wait_until(lambda r: {f["text"] for f in r.chats()} >= set(expected),
                                      timeout=20, what="every accepted message")

        # A last message: anything late (a duplicate, say) would have come before it.
        async with servers["A"].http() as client:
            reply = await client.post(f"/api/rooms/{room}/messages", json={"text": "zzzz"},
                                      headers=bearer(make_token("publisher")))
        assert reply.status_code == 202
        for recorder in recorders:
            await recorder.wait_for_text("zzzz")
        sent_at_the_end = reply.json()["id"]

        # -- what the publisher saw --
        assert {p.status for p in posts} <= {202, 503, None}, [(p.n, p.status) for p in posts]
        assert not unanswered, f"POSTs without an answer in {POST_TIMEOUT_S} s: {unanswered}"
        assert refused, "no POST was refused: the outage went untested"
        assert all(p.retry_after and int(p.retry_after) >= 1 for p in refused), refused
        assert all(down_at - 0.5 <= p.at for p in refused), "503 before the outage"
        assert accepted[0].at < down_at and accepted[-1].at > up_at
        for name, reply in unhealthy.items():
            assert reply.json()["status"] == "unavailable", name
            assert reply.headers.get("Retry-After"), name
        epochs = list(dict.fromkeys(epoch_of(p.id or "") for p in accepted))
        assert len(epochs) == 2, f"expected the old and the new epoch, got {epochs}"

        # -- what every subscriber saw --
        by_text = {p.text: p.id for p in accepted}
        by_text["zzzz"] = sent_at_the_end
        refused_texts = {p.text for p in refused}
        reference: list[str] | None = None
        for recorder in recorders:
            chats = recorder.chats()
            texts = [f["text"] for f in chats]
            ids = [f["id"] for f in chats]
            assert len(texts) == len(set(texts)), f"{recorder.name}: duplicates"
            assert texts == sorted(texts), f"{recorder.name}: out of order"
            assert texts[-1] == "zzzz"
            assert not refused_texts & set(texts), f"{recorder.name}: got a message refused with 503"
            assert set(texts) == set(by_text), f"{recorder.name}: missing {set(by_text) - set(texts)}"
            assert ids == [by_text[t] for t in texts], f"{recorder.name}: ids differ from the 202s"
            assert [epoch_of(i) for i in ids] == sorted((epoch_of(i) for i in ids), key=epochs.index)
            for epoch in epochs:
                seqs = [seq_of(i) for i in ids if epoch_of(i) == epoch]
                assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), recorder.name
            if recorder.name.startswith("sse"):
                assert [f["_sse_id"] for f in chats] == ids
            assert not recorder.ended, f"{recorder.name} was closed (code {recorder.close_code})"
            assert reference is None or ids == reference
            reference = ids
        for ws in sockets:
            assert ws.close_code is None

        # A cursor from before the restart belongs to a gone epoch: recognised as stale.
        old = next(p.id for p in accepted if epoch_of(p.id or "") == epochs[0])
        token = make_token("late")
        async with ws_connect(f"{servers['B'].ws_url}/ws/chat?room={room}&token={token}&since={old}") as ws:
            late = Recorder.websocket("late", ws)
            try:
                await late.wait_until(lambda r: bool(r.of_type("resync")), what="resync")
                assert late.of_type("welcome")[0]["recovered"] is False
            finally:
                await late.stop()

    for name, server in servers.items():
        assert server.process is not None and server.process.returncode == 0, server.output
        assert "Traceback" not in server.output, f"{name}:\n{server.output}"


# -- a reply lost on the way back from Redis (a connection cut after the command ran) ------


@pytest.fixture
async def lossy_pair() -> AsyncIterator[tuple[Hypercorn, Hypercorn, LossyProxy]]:
    """A reaches the shared Redis through a proxy that can lose a reply; B reaches it directly."""
    prefix = f"test:{uuid4().hex}:"
    proxy = LossyProxy(target_port=6379)
    await proxy.start()
    a = Hypercorn({"REDIS_URL": proxy.url, "REDIS_PREFIX": prefix})
    b = Hypercorn({"REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix})
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(a.start(), b.start())
        yield a, b, proxy
    finally:
        await asyncio.gather(a.stop(), b.stop())
        await proxy.close()
        await delete_keys(prefix)


def resp(*args: str) -> bytes:
    """Consecutive arguments as they appear inside a RESP command on the wire."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)


async def test_a_publish_whose_reply_was_lost_is_delivered_once(
    lossy_pair: tuple[Hypercorn, Hypercorn, LossyProxy],
) -> None:
    a, b, proxy = lossy_pair
    room = f"r{uuid4().hex[:12]}"
    token = bearer(make_token("poster"))
    async with AsyncExitStack() as stack, asyncio.timeout(30):
        ws = await stack.enter_async_context(
            ws_connect(f"{b.ws_url}/ws/chat?room={room}&token={make_token('reader')}"))
        reader = Recorder.websocket("ws on B", ws)
        stack.push_async_callback(reader.stop)
        await reader.wait_until(lambda r: bool(r.of_type("welcome")), what="welcome")
        replies = []
        async with a.http() as client:
            for n in range(3):
                if n == 1:  # the publish script's run for this room: its answer never arrives
                    proxy.lose_reply_to(f"c:room:{room}".encode())
                replies.append(await client.post(f"/api/rooms/{room}/messages",
                                                 json={"text": f"m{n}"}, headers=token))
        assert proxy.cuts == 1
        assert [r.status_code for r in replies] in ([202, 202, 202], [202, 503, 202])
        await reader.wait_for_text("m2")
        accepted = {f"m{n}": r.json()["id"] for n, r in enumerate(replies) if r.status_code == 202}
        delivered = [(f["text"], f["id"]) for f in reader.chats()]
        # A 202 means published once; a 503 means not published at all.
        assert delivered == list(accepted.items()), f"202s {accepted}, delivered {delivered}"


async def test_a_join_whose_reply_was_lost_is_still_announced(
    lossy_pair: tuple[Hypercorn, Hypercorn, LossyProxy],
) -> None:
    a, b, proxy = lossy_pair
    room = f"r{uuid4().hex[:12]}"
    async with AsyncExitStack() as stack, asyncio.timeout(30):
        ws = await stack.enter_async_context(
            ws_connect(f"{b.ws_url}/ws/chat?room={room}&token={make_token('watcher')}"))
        observer = Recorder.websocket("observer on B", ws)
        stack.push_async_callback(observer.stop)
        await observer.wait_until(lambda r: bool(r.of_type("welcome")), what="welcome")
        proxy.lose_reply_to(resp("add", "alice"))  # alice's presence entry, written on A
        alice = await stack.enter_async_context(
            ws_connect(f"{a.ws_url}/ws/chat?room={room}&token={make_token('alice')}"))
        await alice.recv()  # welcome
        async with asyncio.timeout(10):
            await proxy.cut.wait()
        async with b.http() as client:
            # Presence does count her: the entry was written, only the answer was lost.
            reply = await client.get(f"/api/rooms/{room}/presence", headers=bearer(make_token("p")))
            assert {"id": "alice", "connections": 1} in reply.json()["users"]
            marker = await client.post(f"/api/rooms/{room}/messages", json={"text": "marker"},
                                       headers=bearer(make_token("p")))
            assert marker.status_code == 202
        # Her join goes out once A's retried call returns, possibly after the marker.
        await observer.wait_until(lambda r: any(f["sender"] == "alice" for f in r.of_type("join")),
                                  what="alice's join")
        await observer.wait_for_text("marker")
        joins = [f["sender"] for f in observer.of_type("join")]
        assert joins.count("alice") == 1, f"alice joined, presence counts her, but joins were {joins}"
