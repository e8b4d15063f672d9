"""MemoryBackend frees what went quiet: histories, their tombstones, buckets and tickets.

The expiry rule itself is in the contract suite; here, what ``retained()`` shows is freed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from hubbub.hub.backends.memory import SWEEP_BATCH, MemoryBackend
from hubbub.hub.message import Cursor
from tests.backends.conftest import Inbox, poll
from tests.backends.test_contract import body

MakeMemory = Callable[..., MemoryBackend]


async def started(backend: MemoryBackend) -> MemoryBackend:
    await backend.start(Inbox())
    return backend


def retained_is(backend: MemoryBackend, **counts: int) -> Callable[[], Awaitable[bool]]:
    """A check for ``poll``: the given ``retained()`` counts are reached."""
    async def check() -> bool:
        retained = backend.retained()
        return all(retained[kind] == n for kind, n in counts.items())
    return check


async def test_memory_quiet_histories_are_freed_then_fold_into_the_watermark(
    make_memory: MakeMemory,
) -> None:
    backend = await started(make_memory(history_ttl_s=1.0))
    published = [await backend.publish(f"room:r{n}", body(n=n)) for n in range(100)]
    assert backend.retained()["channels"] == 100

    assert await poll(retained_is(backend, channels=0, tombstones=100), timeout=5)
    assert await poll(retained_is(backend, channels=0, tombstones=0), timeout=5)

    # Forgotten channels: a cursor at or after the newest seq they held lost nothing there;
    # an older one is told to resync, even on a channel that never lost anything.
    newest = await backend.history(["room:r99"], Cursor.parse(published[-1].id), 10)
    older = await backend.history(["room:r99"], Cursor.parse(published[-2].id), 10)
    untouched = await backend.history(["room:never"], Cursor.parse(published[0].id), 10)
    assert newest.recovered and not older.recovered and not untouched.recovered
    assert backend.retained()["channels"] == 0  # reading a channel does not make it retained


async def test_memory_sweep_frees_only_the_channels_that_went_quiet(make_memory: MakeMemory) -> None:
    backend = await started(make_memory(history_ttl_s=1.0))
    await backend.publish("room:quiet", body())
    await backend.publish("room:busy", body())

    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        await backend.publish("room:busy", body())
        await asyncio.sleep(0.2)

    assert backend.retained()["channels"] == 1  # freed by the sweep, not when read
    assert (await backend.history(["room:quiet"], None, 10)).messages == []
    assert len((await backend.history(["room:busy"], None, 100)).messages) > 5


async def test_memory_sweep_frees_a_large_backlog_in_slices(make_memory: MakeMemory) -> None:
    backend = make_memory(history_ttl_s=1.0)  # not started: the test sweeps by hand
    for n in range(SWEEP_BATCH + 500):
        await backend.publish(f"room:r{n}", body(n=n))
    later = time.monotonic() + 1.5

    assert backend._sweep(later, SWEEP_BATCH) is True  # more is due
    assert backend.retained()["channels"] == 500
    assert backend._sweep(later, SWEEP_BATCH) is False
    assert backend.retained()["channels"] == 0
    assert backend.retained()["tombstones"] == SWEEP_BATCH + 500


async def test_memory_buckets_are_freed_once_full_again(make_memory: MakeMemory) -> None:
    backend = await started(make_memory(history_ttl_s=1.0))
    for n in range(50):
        assert await backend.take_token(f"rate:u{n}", 10.0, 2) == 0.0  # full again in 0.1 s
    assert await backend.take_token("rate:slow", 0.01, 1) == 0.0  # full again in 100 s
    assert backend.retained()["buckets"] == 51

    assert await poll(retained_is(backend, buckets=1), timeout=5)
    assert await backend.take_token("rate:slow", 0.01, 1) > 0.0  # still remembered: still empty
    assert await backend.take_token("rate:u0", 10.0, 2) == 0.0


async def test_memory_expired_tickets_are_freed(make_memory: MakeMemory) -> None:
    backend = await started(make_memory(history_ttl_s=1.0))
    for n in range(50):
        await backend.store_ticket(f"ticket:{n}", "payload", 0.2)
    await backend.store_ticket("ticket:kept", "payload", 60)
    await backend.store_ticket("ticket:redeemed", "payload", 60)
    assert await backend.redeem_ticket("ticket:redeemed") == "payload"

    assert await poll(retained_is(backend, tickets=1), timeout=5)
    assert await backend.redeem_ticket("ticket:kept") == "payload"
    assert backend.retained()["tickets"] == 0


async def test_memory_presence_and_connections_leave_nothing_behind(make_memory: MakeMemory) -> None:
    backend = make_memory()
    await backend.presence_add("room:a", "ann", "c1")
    assert await backend.connection_add("ann", "c1", 2) is True
    assert await backend.connection_add("bob", "c2", 0) is False  # refused: nothing kept
    assert backend.retained()["presence_channels"] == 1
    assert backend.retained()["connection_users"] == 1

    await backend.presence_remove("room:a", "ann", "c1")
    await backend.connection_remove("ann", "c1")
    assert backend.retained() == dict.fromkeys(backend.retained(), 0)


async def test_memory_close_stops_the_sweep_and_is_idempotent(make_memory: MakeMemory) -> None:
    backend = await started(make_memory(history_ttl_s=1.0))
    sweeper = backend._sweeper
    assert sweeper is not None and not sweeper.done()

    await backend.close()
    await backend.close()

    assert sweeper.cancelled()
