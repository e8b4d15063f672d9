"""The timer wheel behind every connection's heartbeat: on time to within a slot, one loop
timer for a slot's crowd, removal, re-adding from a tick, and faults kept to their item."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hubbub.transports.timer_wheel import TimerWheel

TIMEOUT_S = 2.0


class Beat:
    def __init__(self, log: list[tuple[str, float]], name: str, done: asyncio.Event | None = None,
                 again_s: float | None = None, times: int = 1, wheel: TimerWheel | None = None) -> None:
        self.log, self.name, self.done = log, name, done
        self.again_s, self.times, self.wheel = again_s, times, wheel

    def tick(self) -> None:
        self.log.append((self.name, asyncio.get_running_loop().time()))
        self.times -= 1
        if self.times > 0 and self.wheel is not None and self.again_s is not None:
            self.wheel.add(self, self.again_s)
        elif self.done is not None:
            self.done.set()


async def test_ticks_after_their_delay_in_order_never_early() -> None:
    wheel, log, done = TimerWheel(0.02), [], asyncio.Event()
    loop = asyncio.get_running_loop()
    start = loop.time()
    wheel.add(Beat(log, "late", done), 0.15)
    wheel.add(Beat(log, "soon"), 0.05)
    async with asyncio.timeout(TIMEOUT_S):
        await done.wait()
    assert [name for name, _ in log] == ["soon", "late"]
    assert log[0][1] - start >= 0.05 - 0.002 and log[1][1] - start >= 0.15 - 0.002
    assert len(wheel) == 0


async def test_a_slot_crowd_shares_one_loop_timer() -> None:
    wheel, log, done = TimerWheel(0.05), [], asyncio.Event()
    for i in range(1000):
        wheel.add(Beat(log, str(i), done if i == 999 else None), 0.1)
    assert len(wheel) == 1000 and len(wheel._due) <= 2  # the adds may straddle a slot boundary
    async with asyncio.timeout(TIMEOUT_S):
        while len(log) < 1000:
            await done.wait()
            done.clear()
    assert sorted(int(name) for name, _ in log) == list(range(1000))


async def test_removed_items_do_not_tick() -> None:
    wheel, log, done = TimerWheel(0.02), [], asyncio.Event()
    gone = Beat(log, "gone")
    wheel.remove(gone, wheel.add(gone, 0.05))
    wheel.add(Beat(log, "kept", done), 0.1)
    async with asyncio.timeout(TIMEOUT_S):
        await done.wait()
    assert [name for name, _ in log] == ["kept"]


async def test_an_item_re_added_from_its_tick_keeps_beating_once_per_add() -> None:
    wheel, log, done = TimerWheel(0.02), [], asyncio.Event()
    beat = Beat(log, "b", done, again_s=0.0, times=5)  # zero delay: the next slot, not this one
    beat.wheel = wheel
    wheel.add(beat, 0.0)
    async with asyncio.timeout(TIMEOUT_S):
        await done.wait()
    times = [t for _, t in log]
    assert len(times) == 5
    assert all(later > earlier for earlier, later in zip(times, times[1:], strict=False))


async def test_one_failing_tick_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def tick(self) -> None:
            raise RuntimeError("boom")

    wheel, log, done = TimerWheel(0.02), [], asyncio.Event()
    wheel.add(Broken(), 0.05)
    wheel.add(Beat(log, "fine", done), 0.05)
    with caplog.at_level(logging.ERROR, logger="hubbub.transports.timer_wheel"):
        async with asyncio.timeout(TIMEOUT_S):
            await done.wait()
    assert log and "heartbeat of" in caplog.text and "boom" in caplog.text


def test_a_wheel_serves_a_new_loop_after_the_old_one_closed() -> None:
    wheel = TimerWheel(0.02)

    async def one_beat() -> list[tuple[str, float]]:
        log, done = [], asyncio.Event()
        wheel.add(Beat(log, "x", done), 0.03)
        wheel.add(Beat(log, "never"), 60)  # left behind when this loop ends
        async with asyncio.timeout(TIMEOUT_S):
            await done.wait()
        return log

    assert [n for n, _ in asyncio.run(one_beat())] == ["x"]
    assert [n for n, _ in asyncio.run(one_beat())] == ["x"]
    assert len(wheel) == 1  # the first loop's leftover was dropped with it
