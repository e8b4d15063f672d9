"""Scale-out on Redis (API.md "Scale-out"): real `hypercorn` processes act as one hub.

Two separate command lines on one Redis (A and B, each on its own port), and one
command line with `--workers 2` (two workers behind one port: a connection lands on
a worker the kernel picks, so those tests open enough connections to use both and
assert what must hold whichever worker serves what).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from uuid import uuid4

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import make_token
from tests.e2e.clients import bearer, recv_json, sse_connect, ws_connect, ws_rejected
from tests.e2e.processes import REDIS_URL, Hypercorn, Recorder

pytestmark = pytest.mark.redis

StartServers = Callable[..., Awaitable[list[Hypercorn]]]


@pytest.fixture
async def start_servers(redis_prefix: str) -> AsyncIterator[StartServers]:
    """``await start_servers(count, env, workers=None)``: command lines sharing one Redis prefix.

    On the way out each gets SIGTERM and must exit cleanly with no traceback in its output.
    """
    async with AsyncExitStack() as stack:
        started: list[Hypercorn] = []

        async def start(count: int = 2, env: dict[str, str] | None = None,
                        workers: int | None = None) -> list[Hypercorn]:
            full = {"REDIS_URL": REDIS_URL, "REDIS_PREFIX": redis_prefix, **(env or {})}
            servers = [Hypercorn(full, workers) for _ in range(count)]
            for server in servers:
                stack.push_async_callback(server.stop)
            await asyncio.gather(*(server.start() for server in servers))
            started.extend(servers)
            return servers

        yield start
        codes = [await server.stop() for server in started]
        for server, code in zip(started, codes, strict=True):
            assert code == 0 or server.killed, server.output
            assert "Traceback" not in server.output, server.output
            assert "would be split" not in server.output, server.output


def room_name() -> str:
    return f"r{uuid4().hex[:12]}"


async def open_ws(stack: AsyncExitStack, server: Hypercorn, path: str, name: str) -> Recorder:
    """A WebSocket whose frames a Recorder collects; it waits for the welcome."""
    ws: ClientConnection = await stack.enter_async_context(ws_connect(f"{server.ws_url}{path}"))
    recorder = Recorder.websocket(name, ws)
    stack.push_async_callback(recorder.stop)
    await recorder.wait_until(lambda r: bool(r.of_type("welcome")), what="welcome")
    return recorder


async def open_sse(stack: AsyncExitStack, server: Hypercorn, path: str, name: str,
                   headers: dict[str, str] | None = None) -> Recorder:
    client = await stack.enter_async_context(server.http())
    stream = await stack.enter_async_context(sse_connect(client, path, headers=headers))
    recorder = Recorder.sse(name, stream)
    stack.push_async_callback(recorder.stop)
    await recorder.wait_until(lambda r: bool(r.of_type("welcome")), what="welcome")
    return recorder


async def post(server: Hypercorn, room: str, user: str, text: str,
               client: httpx.AsyncClient | None = None) -> httpx.Response:
    """POST a chat message; without ``client`` on a connection of its own."""
    if client is None:
        async with server.http() as own:
            return await post(server, room, user, text, own)
    return await client.post(f"/api/rooms/{room}/messages", json={"text": text},
                             headers=bearer(make_token(user)))


async def post_ok(server: Hypercorn, room: str, user: str, text: str) -> str:
    reply = await post(server, room, user, text)
    assert reply.status_code == 202, reply.text
    message_id: str = reply.json()["id"]
    return message_id


def seq(message_id: str) -> int:
    return int(message_id.rpartition("-")[2])


def chat_ids(recorder: Recorder) -> list[str]:
    return [f["id"] for f in recorder.chats()]


async def presence(server: Hypercorn, room: str) -> dict[str, int]:
    async with server.http() as client:
        reply = await client.get(f"/api/rooms/{room}/presence", headers=bearer(make_token("probe")))
    assert reply.status_code == 200, reply.text
    return {u["id"]: u["connections"] for u in reply.json()["users"]}


async def until_presence(servers: list[Hypercorn], room: str, expected: dict[str, int],
                         timeout: float = 10.0) -> None:
    """Polls every server until each reports ``expected`` (presence writes are not instant)."""
    last: list[dict[str, int]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = [await presence(server, room) for server in servers]
                if all(seen == expected for seen in last):
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"presence never became {expected}: {last}") from None


def presence_frames(recorder: Recorder, users: set[str]) -> list[tuple[str, str]]:
    return [(f["type"], f["sender"]) for f in recorder.frames
            if f.get("type") in ("join", "leave") and f.get("sender") in users]


# -- two separate processes --------------------------------------------------------------


async def test_healthz_says_redis_on_every_process(start_servers: StartServers) -> None:
    for server in await start_servers(2):
        async with server.http() as client:
            reply = await client.get("/healthz")
        assert reply.status_code == 200
        assert reply.json()["backend"] == "redis" and reply.json()["status"] == "ok"


async def test_post_to_a_reaches_websocket_and_sse_subscribers_on_b_with_the_same_id(
    start_servers: StartServers,
) -> None:
    a, b = await start_servers(2)
    room = room_name()
    async with AsyncExitStack() as stack:
        token = make_token("reader")
        subscribers = [
            await open_ws(stack, b, f"/ws/chat?room={room}&token={token}", "ws on B"),
            await open_sse(stack, b, f"/sse/chat?room={room}", "sse on B", bearer(token)),
            await open_ws(stack, a, f"/ws/chat?room={room}&token={token}", "ws on A"),
            await open_sse(stack, a, f"/sse/chat?room={room}", "sse on A", bearer(token)),
        ]
        from_a = await post_ok(a, room, "alice", "posted to A")
        from_b = await post_ok(b, room, "alice", "posted to B")
        # A chat frame over a WebSocket on A: acked there with the id B's subscribers see.
        sender = await stack.enter_async_context(
            ws_connect(f"{a.ws_url}/ws/chat?room={room}&token={make_token('carol')}"))
        assert (await recv_json(sender))["type"] == "welcome"
        await sender.send('{"type":"chat","text":"sent over WS on A","ref":"r1"}')
        ack = await recv_json(sender)
        while ack["type"] != "ack":  # past join frames
            ack = await recv_json(sender)
        assert ack["ref"] == "r1"

        for subscriber in subscribers:
            frames = [await subscriber.wait_for_text(text)
                      for text in ("posted to A", "posted to B", "sent over WS on A")]
            assert [f["id"] for f in frames] == [from_a, from_b, ack["id"]], subscriber.name
            assert [f["sender"] for f in frames] == ["alice", "alice", "carol"]
            assert all(f["channel"] == f"room:{room}" for f in frames)
            if subscriber.name.startswith("sse"):
                assert [f["_sse_id"] for f in frames] == [f["id"] for f in frames]
            assert chat_ids(subscriber) == [from_a, from_b, ack["id"]]  # once each, in order
        assert seq(from_a) < seq(from_b) < seq(ack["id"])


async def test_notifications_posted_to_a_reach_the_user_on_b(start_servers: StartServers) -> None:
    a, b = await start_servers(2)
    dave = make_token("dave")
    async with AsyncExitStack() as stack:
        subscribers = [
            await open_ws(stack, b, f"/ws/notifications?token={dave}", "ws on B"),
            await open_sse(stack, b, "/sse/notifications", "sse on B", bearer(dave)),
        ]
        ids = []
        async with a.http() as client:
            for body in ({"user": "dave", "data": {"n": 1}}, {"broadcast": True, "data": {"n": 2}}):
                reply = await client.post("/api/notifications", json=body,
                                          headers=bearer(make_token("ops", scope="notify")))
                assert reply.status_code == 202, reply.text
                ids.append(reply.json()["id"])
        for subscriber in subscribers:
            await subscriber.wait_until(lambda r: len(r.of_type("notification")) >= 2,
                                        what="two notifications")
            frames = subscriber.of_type("notification")
            assert [f["id"] for f in frames] == ids
            assert [f["data"] for f in frames] == [{"n": 1}, {"n": 2}]
            assert [f["channel"] for f in frames] == ["user:dave", "broadcast"]


async def test_resume_on_b_with_a_cursor_from_a_replays_exactly_the_missed_ones(
    start_servers: StartServers,
) -> None:
    a, b = await start_servers(2)
    room = room_name()
    token = make_token("reader")
    async with AsyncExitStack() as stack:
        first = await open_ws(stack, a, f"/ws/chat?room={room}&token={token}", "ws on A")
        await post_ok(b, room, "alice", "m0")
        cursor = (await first.wait_for_text("m0"))["id"]  # the cursor as A handed it out
    missed = []
    for n, server in enumerate((b, a, b), start=1):
        missed.append(await post_ok(server, room, "alice", f"m{n}"))
        await post_ok(server, room_name(), "other", "elsewhere")  # another room: never replayed

    async with AsyncExitStack() as stack:
        resumed = [
            await open_ws(stack, b, f"/ws/chat?room={room}&token={token}&since={cursor}", "ws on B"),
            await open_sse(stack, b, f"/sse/chat?room={room}", "sse on B (Last-Event-ID)",
                           {**bearer(token), "Last-Event-ID": cursor}),
            await open_sse(stack, a, f"/sse/chat?room={room}&last_event_id={cursor}",
                           "sse on A (query)", bearer(token)),
        ]
        live = await post_ok(a, room, "alice", "m4")
        for subscriber in resumed:
            assert subscriber.of_type("welcome")[0]["recovered"] is True, subscriber.name
            await subscriber.wait_for_text("m4")
            assert [f["text"] for f in subscriber.chats()] == ["m1", "m2", "m3", "m4"], subscriber.name
            assert chat_ids(subscriber) == [*missed, live], subscriber.name
            assert not subscriber.of_type("resync")

    async with b.http() as client:
        reply = await client.get(f"/api/rooms/{room}/messages?since={cursor}", headers=bearer(token))
    assert reply.status_code == 200
    assert reply.json()["recovered"] is True
    assert [m["id"] for m in reply.json()["messages"]] == [*missed, live]


async def test_a_cursor_of_another_epoch_is_stale_on_every_process(start_servers: StartServers) -> None:
    a, b = await start_servers(2)
    room = room_name()
    real = await post_ok(a, room, "alice", "m0")
    stale = f"00000000-{seq(real)}"
    token = make_token("reader")
    async with AsyncExitStack() as stack:
        for server in (a, b):
            ws = await open_ws(stack, server, f"/ws/chat?room={room}&token={token}&since={stale}",
                               "ws")
            assert ws.of_type("welcome")[0]["recovered"] is False
            await ws.wait_until(lambda r: bool(r.of_type("resync")), what="resync")


async def test_presence_counts_connections_on_both_and_announces_once_per_user(
    start_servers: StartServers,
) -> None:
    a, b = await start_servers(2)
    room = room_name()
    watched = {"alice", "bob"}
    path = f"/ws/chat?room={room}&token="
    async with AsyncExitStack() as outer:
        observers = [await open_ws(outer, a, path + make_token("watcher"), "observer on A"),
                     await open_ws(outer, b, path + make_token("watcher"), "observer on B")]

        async def everyone_saw(frames: list[tuple[str, str]]) -> None:
            for observer in observers:
                await observer.wait_until(lambda r: presence_frames(r, watched) == frames,
                                          what=f"presence frames {frames}")

        alice_on_a, alice_on_b, bob_on_b = AsyncExitStack(), AsyncExitStack(), AsyncExitStack()
        for stack in (alice_on_a, alice_on_b, bob_on_b):
            outer.push_async_callback(stack.aclose)
        await open_ws(alice_on_a, a, path + make_token("alice"), "alice on A")
        await everyone_saw([("join", "alice")])
        await open_sse(alice_on_b, b, f"/sse/chat?room={room}", "alice on B", bearer(make_token("alice")))
        await open_ws(bob_on_b, b, path + make_token("bob"), "bob on B")
        await until_presence([a, b], room, {"watcher": 2, "alice": 2, "bob": 1})
        await everyone_saw([("join", "alice"), ("join", "bob")])  # alice's second: no join
        await alice_on_a.aclose()
        await until_presence([a, b], room, {"watcher": 2, "alice": 1, "bob": 1})
        # A marker after the change: had alice's first close announced a leave, it came first.
        await post_ok(a, room, "marker", "after alice left A")
        for observer in observers:
            await observer.wait_for_text("after alice left A")
            assert presence_frames(observer, watched) == [("join", "alice"), ("join", "bob")]
        await alice_on_b.aclose()
        await everyone_saw([("join", "alice"), ("join", "bob"), ("leave", "alice")])
        await bob_on_b.aclose()
        await everyone_saw([("join", "alice"), ("join", "bob"), ("leave", "alice"), ("leave", "bob")])
        await until_presence([a, b], room, {"watcher": 2})
        await post_ok(b, room, "marker", "the end")
        for observer in observers:
            await observer.wait_for_text("the end")
            assert presence_frames(observer, watched) == [
                ("join", "alice"), ("join", "bob"), ("leave", "alice"), ("leave", "bob")]


async def test_a_crashed_process_leaves_no_ghost_and_its_users_leave(
    start_servers: StartServers,
) -> None:
    """SIGKILL: nothing says goodbye. Presence entries live 30 s unless renewed (every 10 s)."""
    a, b = await start_servers(2)
    room = room_name()
    path = f"/ws/chat?room={room}&token="
    async with AsyncExitStack() as stack:
        observer = await open_ws(stack, a, path + make_token("watcher"), "observer on A")
        alice = await open_ws(stack, b, path + make_token("alice"), "alice on B")
        await until_presence([a, b], room, {"watcher": 1, "alice": 1})
        await observer.wait_until(lambda r: presence_frames(r, {"alice"}) == [("join", "alice")],
                                  what="alice's join")
        await b.kill()
        crashed_at = asyncio.get_running_loop().time()
        await alice.wait_until(lambda r: r.ended, what="the connection to drop")
        assert await presence(a, room) == {"watcher": 1, "alice": 1}  # until her entry expires
        await until_presence([a], room, {"watcher": 1}, timeout=45)
        assert asyncio.get_running_loop().time() - crashed_at < 32  # TTL 30 s from the last renewal
        # She is gone for everyone: a client keeping a member list from join/leave must learn it.
        await observer.wait_until(
            lambda r: presence_frames(r, {"alice"}) == [("join", "alice"), ("leave", "alice")],
            timeout=15, what="alice's leave once her entry expired")


async def test_rate_limit_is_one_budget_across_processes(start_servers: StartServers) -> None:
    a, b = await start_servers(2, {"RATE_LIMIT_BURST": "3", "RATE_LIMIT_PER_SECOND": "0.01"})
    room = room_name()
    statuses = [(await post(server, room, "carol", f"m{n}")).status_code
                for n, server in enumerate((a, b, a))]
    assert statuses == [202, 202, 202]
    for server in (b, a):
        refused = await post(server, room, "carol", "one too many")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
    # The same budget over a WebSocket on either process.
    async with ws_connect(f"{b.ws_url}/ws/chat?room={room}&token={make_token('carol')}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send('{"type":"chat","text":"over WS"}')
        frame = await recv_json(ws)
        while frame["type"] in ("join", "leave"):
            frame = await recv_json(ws)
        assert (frame["type"], frame["code"]) == ("error", "rate_limited")
    # Another user has a budget of their own.
    assert (await post(b, room, "dan", "hello")).status_code == 202


async def test_a_ticket_from_a_works_once_on_b(start_servers: StartServers) -> None:
    a, b = await start_servers(2)
    room = room_name()
    tickets = []
    async with a.http() as client:
        for _ in range(2):
            reply = await client.post("/auth/ticket", headers=bearer(make_token("erin")))
            assert reply.status_code == 200, reply.text
            tickets.append(reply.json()["ticket"])
    ws_ticket, sse_ticket = tickets
    async with ws_connect(f"{b.ws_url}/ws/chat?room={room}&ticket={ws_ticket}") as ws:
        welcome = await recv_json(ws)
        assert (welcome["type"], welcome["user"]) == ("welcome", "erin")
    for server in (a, b):
        refused = await ws_rejected(f"{server.ws_url}/ws/chat?room={room}&ticket={ws_ticket}")
        assert refused.status_code == 401
    async with AsyncExitStack() as stack:
        sse = await open_sse(stack, b, f"/sse/chat?room={room}&ticket={sse_ticket}", "sse on B")
        assert sse.of_type("welcome")[0]["user"] == "erin"
    for server in (a, b):
        async with server.http() as client:
            reply = await client.get(f"/sse/chat?room={room}&ticket={sse_ticket}")
        assert reply.status_code == 401


# -- one command line, two workers behind one port --------------------------------------


async def connections_per_worker(server: Hypercorn, samples: int) -> set[int]:
    """/healthz "connections" (this worker's live ones), each asked on a new connection."""
    seen = set()
    for _ in range(samples):
        async with server.http() as client:
            reply = await client.get("/healthz")
        assert reply.status_code == 200
        assert reply.json()["backend"] == "redis"
        seen.add(reply.json()["connections"])
    return seen


async def test_two_workers_on_one_port_act_as_one_hub(start_servers: StartServers) -> None:
    (server,) = await start_servers(1, {"RATE_LIMIT_BURST": "3", "RATE_LIMIT_PER_SECOND": "0.01"},
                                    workers=2)
    room = room_name()
    path = f"/ws/chat?room={room}&token="
    async with AsyncExitStack() as stack:
        subscribers = [await open_ws(stack, server, path + make_token(f"w{n}"), f"ws {n}")
                       for n in range(8)]
        subscribers += [await open_sse(stack, server, f"/sse/chat?room={room}", f"sse {n}",
                                       bearer(make_token(f"s{n}"))) for n in range(2)]
        # A worker that reports fewer live connections than are open proves the other holds some.
        while max(await connections_per_worker(server, 20)) >= len(subscribers):
            assert len(subscribers) < 30, "every connection landed on one worker"
            subscribers.append(await open_ws(stack, server, path + make_token(f"x{len(subscribers)}"),
                                             f"extra {len(subscribers)}"))

        # Presence: "multi" has four connections, spread over the workers by the kernel.
        for n in range(4):
            await open_ws(stack, server, path + make_token("multi"), f"multi {n}")
        expected = {f"w{n}": 1 for n in range(8)} | {"s0": 1, "s1": 1, "multi": 4}
        expected |= {f"x{n}": 1 for n in range(10, len(subscribers))}
        await until_presence([server] * 6, room, expected)

        # Twenty POSTs, each on a connection of its own (so on either worker).
        posted = [await post_ok(server, room, f"poster{n}", f"m{n}") for n in range(20)]
        assert [seq(i) for i in posted] == sorted(seq(i) for i in posted)
        assert len({i.rpartition("-")[0] for i in posted}) == 1  # one epoch
        for subscriber in subscribers:
            await subscriber.wait_for_text("m19")
            assert chat_ids(subscriber) == posted, subscriber.name
            assert [f["text"] for f in subscriber.chats()] == [f"m{n}" for n in range(20)]
            assert presence_frames(subscriber, {"multi"}) == [("join", "multi")]
            if subscriber.name.startswith("sse"):
                assert [f["_sse_id"] for f in subscriber.chats()] == posted

        # One rate budget: of eight POSTs by one user on fresh connections, exactly three pass.
        statuses = [(await post(server, room, "limited", f"l{n}")).status_code for n in range(8)]
        assert sorted(statuses) == [202] * 3 + [429] * 5, statuses

        # Resume with a cursor on whichever worker the kernel picks: exactly the later ones.
        cursor = posted[9]
        for n in range(6):
            async with AsyncExitStack() as resume:
                resumed = await open_ws(resume, server, f"{path}{make_token('late')}&since={cursor}",
                                        f"resume {n}")
                assert resumed.of_type("welcome")[0]["recovered"] is True
                await resumed.wait_until(lambda r: len(r.chats()) >= 13, what="the replay")
                replayed = [f for f in resumed.chats() if f["sender"] != "limited"]
                assert [f["id"] for f in replayed] == posted[10:]

        # Tickets: each works once, whichever worker issued or redeems it.
        async with server.http() as client:
            for _ in range(4):
                reply = await client.post("/auth/ticket", headers=bearer(make_token("erin")))
                assert reply.status_code == 200, reply.text
                ticket = reply.json()["ticket"]
                async with ws_connect(f"{server.ws_url}/ws/chat?room={room}&ticket={ticket}") as ws:
                    assert (await recv_json(ws))["user"] == "erin"
                refused = await ws_rejected(f"{server.ws_url}/ws/chat?room={room}&ticket={ticket}")
                assert refused.status_code == 401

        for subscriber in subscribers:
            assert not subscriber.ended, subscriber.name
