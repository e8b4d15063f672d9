"""The timer wheel behind every connection's heartbeat: on time to within a slot, one loop
timer for a slot's crowd, removal, re-adding from a tick, and faults kept to their item."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hubbub.transports.timer_wheel import BURST, MAX_GRANULARITY_S, TimerWheel, granularity_for

TIMEOUT_S = 2.0


class Beat:
    def __init__(self, log: list[tuple[str, float]], name: str, done: asyncio.Event | None = None,
                 again_s: float | None = None, times: int = 1) -> None:
        self.log, self.name, self.done = log, name, done
        self.again_s, self.times = again_s, times
        self.wheel_slot: int | None = None

    def tick(self) -> float | None:
        self.log.append((self.name, asyncio.get_running_loop().time()))
        self.times -= 1
        if self.times > 0 and self.again_s is not None:
            return self.again_s
        if self.done is not None:
            self.done.set()
        return None


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
        wheel.add(Beat(log, str(i), done), 0.1)
    assert len(wheel) == 1000 and len(wheel._due) <= 2  # the adds may straddle a slot boundary
    async with asyncio.timeout(TIMEOUT_S):
        while len(log) < 1000:
            await done.wait()
            done.clear()
    assert sorted(int(name) for name, _ in log) == list(range(1000))


async def test_removed_items_do_not_tick() -> None:
    wheel, log, done = TimerWheel(0.02), [], asyncio.Event()
    gone = Beat(log, "gone")
    wheel.add(gone, 0.05)
    wheel.remove(gone)
    wheel.add(Beat(log, "kept", done), 0.1)
    async with asyncio.timeout(TIMEOUT_S):
        await done.wait()
    assert [name for name, _ in log] == ["kept"]


async def test_a_tick_returning_a_delay_beats_again_once_per_return() -> None:
    wheel, log, done = TimerWheel(0.02), [], asyncio.Event()
    beat = Beat(log, "b", done, again_s=0.0, times=5)  # zero delay: the next slot, not this one
    wheel.add(beat, 0.0)
    async with asyncio.timeout(TIMEOUT_S):
        await done.wait()
    times = [t for _, t in log]
    assert len(times) == 5
    assert all(later > earlier for earlier, later in zip(times, times[1:], strict=False))


async def test_the_delays_a_slot_crowd_returns_each_take_effect() -> None:
    wheel, log = TimerWheel(0.02), []
    done = asyncio.Event()
    beats = {name: Beat(log, name, done if name == "slow" else None, again_s=again, times=2)
             for name, again in (("quick", 0.04), ("slow", 0.2), ("quick2", 0.04))}
    start = asyncio.get_running_loop().time()
    for beat in beats.values():
        wheel.add(beat, 0.02)
    async with asyncio.timeout(TIMEOUT_S):
        await done.wait()
    second = {name: t - start for name, t in log[3:]}
    assert sorted(second) == ["quick", "quick2", "slow"]
    assert second["quick"] < second["slow"] and second["quick2"] < second["slow"]
    assert second["slow"] >= 0.02 + 0.2 - 0.002 and second["quick"] >= 0.02 + 0.04 - 0.002
    assert all(beat.wheel_slot is None for beat in beats.values()) and len(wheel) == 0


async def test_a_big_slot_ticks_in_chunks_with_other_callbacks_between() -> None:
    wheel, order, done = TimerWheel(0.02), [], asyncio.Event()
    loop = asyncio.get_running_loop()
    count = 3 * BURST

    class Quiet:
        wheel_slot: int | None = None

        def tick(self) -> float | None:
            if not order:  # the burst's first beat: something else wants the loop
                loop.call_soon(order.append, "other")
            order.append("beat")
            if len(order) == count + 1:
                done.set()
            return None

    for _ in range(count):
        wheel.add(Quiet(), 0.02)
    async with asyncio.timeout(TIMEOUT_S):
        await done.wait()
    assert order.count("beat") == count
    assert order.index("other") == BURST  # after the first chunk, before the second


def test_slots_are_a_thirtieth_of_the_interval_and_at_most_half_a_second() -> None:
    assert granularity_for(15.0) == MAX_GRANULARITY_S == 0.5
    assert granularity_for(3.0) == pytest.approx(0.1)
    assert granularity_for(0.05) == pytest.approx(0.05 / 30)


async def test_one_failing_tick_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        wheel_slot: int | None = None

        def tick(self) -> float | None:
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
