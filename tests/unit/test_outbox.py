"""Subscription: the bounded outbox, the replay/live seam, epochs, resync and close."""

from __future__ import annotations

import asyncio
import json

import pytest

from hubbub.hub.message import History, Message
from hubbub.hub.outbox import SlowConsumer, Subscription

TIMEOUT_S = 2.0


def msg(seq: int, epoch: str = "e1", channel: str = "room:lobby", origin: str | None = None) -> Message:
    return Message(channel, f'{{"id":"{epoch}-{seq}","n":{seq}}}', seq, epoch, origin)


async def drain(sub: Subscription) -> list[Message]:
    """Everything queued right now (the outbox must not be empty)."""
    async with asyncio.timeout(TIMEOUT_S):
        return await sub.next_batch()


def ids(messages: list[Message]) -> list[str | None]:
    return [m.id for m in messages]


async def test_subscription_live_messages_delivered_in_order() -> None:
    sub = Subscription(("room:lobby",), "c1", 10)
    for seq in (1, 2, 3):
        sub.offer(msg(seq))
    assert ids(await drain(sub)) == ["e1-1", "e1-2", "e1-3"]
    assert sub.last_id == "e1-3"


async def test_subscription_seam_overlap_deduplicated_in_id_order() -> None:
    sub = Subscription(("room:lobby",), "c1", 10)
    sub.hold()
    for seq in (3, 4, 5):  # live during the replay; 3 and 4 are also in the history
        sub.offer(msg(seq))
    sub.replay(History([msg(2), msg(3), msg(4)], recovered=True))
    sub.offer(msg(5))  # a backend catch-up repeating the last one
    sub.offer(msg(6))
    assert ids(await drain(sub)) == ["e1-2", "e1-3", "e1-4", "e1-5", "e1-6"]
    assert sub.recovered is True


async def test_subscription_held_messages_not_delivered_before_replay() -> None:
    sub = Subscription(("room:lobby",), "c1", 10)
    sub.hold()
    sub.offer(msg(7))
    sub.send_frame('{"type":"sentinel"}')
    assert [m.json for m in await drain(sub)] == ['{"type":"sentinel"}']
    sub.replay(History([msg(6)], recovered=True))
    assert ids(await drain(sub)) == ["e1-6", "e1-7"]


async def test_subscription_epoch_change_resets_dedupe() -> None:
    sub = Subscription(("room:lobby",), "c1", 10)
    sub.offer(msg(5, epoch="old"))
    sub.offer(msg(1, epoch="new"))  # the backend restarted: a lower seq in a new epoch is new
    sub.offer(msg(1, epoch="new"))  # …and a repeat within the new epoch is still dropped
    sub.offer(msg(2, epoch="new"))
    assert ids(await drain(sub)) == ["old-5", "new-1", "new-2"]
    assert sub.last_id == "new-2"


async def test_subscription_stale_history_resync_first_and_no_replay() -> None:
    sub = Subscription(("room:lobby",), "c1", 10)
    sub.hold()
    sub.offer(msg(9))
    sub.replay(History([msg(7), msg(8), msg(9)], recovered=False))
    batch = await drain(sub)
    assert json.loads(batch[0].json) == {"type": "resync"}
    assert batch[0].id is None
    assert ids(batch[1:]) == ["e1-9"]
    assert sub.recovered is False


async def test_subscription_no_cursor_replay_none_recovered_unset() -> None:
    sub = Subscription(("room:lobby",), "c1", 10)
    sub.replay(None)
    sub.offer(msg(1))
    assert ids(await drain(sub)) == ["e1-1"]
    assert sub.recovered is None


async def test_subscription_own_origin_skipped() -> None:
    sub = Subscription(("room:lobby",), "c1", 10)
    sub.offer(msg(1, origin="c1"))
    sub.offer(msg(2, origin="c2"))
    sub.offer(msg(3))
    assert ids(await drain(sub)) == ["e1-2", "e1-3"]


async def test_subscription_send_frame_queued_behind_earlier_messages() -> None:
    sub = Subscription(("room:lobby",), "c1", 10)
    sub.offer(msg(1))
    sub.send_frame('{"type":"ack"}')
    sub.offer(msg(2))
    assert [m.json for m in await drain(sub)] == [msg(1).json, '{"type":"ack"}', msg(2).json]


async def test_subscription_close_empty_outbox_next_batch_returns_empty() -> None:
    sub = Subscription(("room:lobby",), "c1", 10)
    sub.close()
    assert await drain(sub) == []
    sub.offer(msg(1))  # nothing is queued after close
    assert await drain(sub) == []


async def waiting_batch(sub: Subscription) -> asyncio.Task[list[Message]]:
    """A task already parked inside next_batch(): it signals, then waits, in one step."""
    started = asyncio.Event()

    async def wait() -> list[Message]:
        started.set()
        return await sub.next_batch()

    task = asyncio.create_task(wait())
    async with asyncio.timeout(TIMEOUT_S):
        await started.wait()
    return task


async def test_subscription_close_while_waiting_wakes_writer_with_empty() -> None:
    sub = Subscription(("room:lobby",), "c1", 10)
    waiting = await waiting_batch(sub)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            assert not waiting.done()
            sub.close()
            assert await waiting == []
    finally:
        waiting.cancel()


async def test_subscription_next_batch_waits_then_returns_offered() -> None:
    sub = Subscription(("room:lobby",), "c1", 10)
    waiting = await waiting_batch(sub)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            assert not waiting.done()
            sub.offer(msg(1))
            assert ids(await waiting) == ["e1-1"]
    finally:
        waiting.cancel()


async def test_subscription_outbox_full_next_batch_raises_slow_consumer() -> None:
    sub = Subscription(("room:lobby",), "c1", 3)
    for seq in range(1, 5):
        sub.offer(msg(seq))  # never blocks, even past the bound
    assert sub.overflowed
    with pytest.raises(SlowConsumer):
        await drain(sub)
    sub.offer(msg(5))
    with pytest.raises(SlowConsumer):
        await drain(sub)


async def test_subscription_outbox_at_bound_not_slow() -> None:
    sub = Subscription(("room:lobby",), "c1", 3)
    for seq in range(1, 4):
        sub.offer(msg(seq))
    assert not sub.overflowed
    assert len(await drain(sub)) == 3


async def test_subscription_held_overflow_during_replay_lets_go_not_slow() -> None:
    # Held live messages are in history too: past the bound they are let go (the hub then
    # pages on through history), never turned into a slow-consumer close.
    sub = Subscription(("room:lobby",), "c1", 3)
    sub.hold()
    for seq in range(10, 15):  # the fourth is one too many: 10-13 are let go, 14 is held
        sub.offer(msg(seq))
    assert sub.held_drops == 1
    assert not sub.overflowed
    sub.replay_page([msg(9), msg(10), msg(11)])
    assert ids(await drain(sub)) == ["e1-9", "e1-10", "e1-11"]
    sub.replay_page([msg(12), msg(13)])
    sub.go_live()
    assert ids(await drain(sub)) == ["e1-12", "e1-13", "e1-14"]
