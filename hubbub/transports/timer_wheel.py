"""One loop timer for every connection's heartbeat: a hashed timer wheel.

Each live connection wakes every ``HEARTBEAT_INTERVAL`` (and at token expiry). With a
loop timer each, 15,000 idle connections keep 15,000 ``TimerHandle``s (and, under uvloop,
as many libuv timers) and pay a heap insertion and removal per beat. Here a connection is
an entry in the set of its slot and one loop timer fires per occupied slot: a beat costs a
set insertion and a call, and a connection that ends is discarded from its slot at once.
Beats run up to one slot late, never early.

A slot is wide on purpose (``granularity_for``): the beats of a slot go out as one burst of
writes, and a burst of hundreds costs less per write than a trickle of tens (the peers'
replies, the pongs, then come back together and are read in fewer loop turns). A burst
runs ``BURST`` beats per loop turn, so messages still go out between them.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from typing import Protocol

log = logging.getLogger(__name__)

SLOTS_PER_INTERVAL = 30  # a beat runs at most 1/30 of its interval late ...
MAX_GRANULARITY_S = 0.5  # ... and at most half a second (token expiry, silence checks)
BURST = 100  # beats per loop turn: a slot of thousands lets messages through between them


def granularity_for(interval_s: float) -> float:
    """The slot width for beats every ``interval_s``: 0.5 s at the default 15 s."""
    return min(interval_s / SLOTS_PER_INTERVAL, MAX_GRANULARITY_S)


class Ticking(Protocol):
    wheel_slot: int | None  # the wheel's to set: the slot of its next tick, None when none is due

    def tick(self) -> float | None:
        """Its beat. Returns the seconds until the next one, or None for no more."""


class TimerWheel:
    """Calls ``item.tick()`` ``delay`` seconds after ``add`` (to within a slot), and again
    after whatever delay each tick returns."""

    __slots__ = ("granularity", "_loop", "_slots", "_due", "_handle", "_handle_slot", "_firing")

    def __init__(self, granularity_s: float) -> None:
        self.granularity = granularity_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[int, set[Ticking]] = {}
        self._due: list[int] = []  # the occupied slots, a heap
        self._handle: asyncio.Handle | None = None  # the loop timer, or the next turn of a burst
        self._handle_slot = -1
        self._firing = -1  # the last slot run: what is added now goes after it

    def __len__(self) -> int:
        return sum(len(items) for items in self._slots.values())

    def add(self, item: Ticking, delay_s: float) -> None:
        """Schedules ``item.tick()``, its first: later ones are what each tick returns (an item
        has one tick scheduled at most)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new loop (an app served again, tests)
            self._reset(loop)
        self._put(item, self._slot_after(loop.time(), delay_s))
        if self._handle is None or self._due[0] < self._handle_slot:
            self._arm(self._due[0])

    def remove(self, item: Ticking) -> None:
        """Forgets the item's scheduled tick (an emptied slot is dropped when its time comes)."""
        slot, item.wheel_slot = item.wheel_slot, None
        items = self._slots.get(slot) if slot is not None else None
        if items is not None:
            items.discard(item)

    def _slot_after(self, now: float, delay_s: float) -> int:
        return max(math.ceil((now + max(delay_s, 0.0)) / self.granularity), self._firing + 1)

    def _put(self, item: Ticking, slot: int) -> None:
        items = self._slots.get(slot)
        if items is None:
            items = self._slots[slot] = set()
            heapq.heappush(self._due, slot)
        items.add(item)
        item.wheel_slot = slot

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._loop, self._handle, self._handle_slot, self._firing = loop, None, -1, -1
        self._slots.clear()
        self._due.clear()

    def _arm(self, slot: int) -> None:
        assert self._loop is not None
        if self._handle is not None:
            self._handle.cancel()
        self._handle_slot = slot
        self._handle = self._loop.call_at(slot * self.granularity, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None
        self._handle = None
        now_s = self._loop.time()
        # The loop may run a timer a little before its time: the slot it was set for is due.
        now = self._firing = max(math.floor(now_s / self.granularity), self._handle_slot)
        due, slots = self._due, self._slots
        budget = BURST
        while due and due[0] <= now and budget:
            items = slots[due[0]]
            while items and budget:
                item = items.pop()
                budget -= 1
                item.wheel_slot = None
                try:
                    delay = item.tick()
                except Exception:  # one connection's fault must not stop everyone's heartbeat
                    log.exception("heartbeat of %r failed", item)
                    continue
                if delay is not None:
                    self._put(item, self._slot_after(now_s, delay))
            if not items:
                del slots[heapq.heappop(due)]
        while due and not slots[due[0]]:  # emptied by remove(): nothing to wake for
            del slots[heapq.heappop(due)]
        if due and due[0] <= now:  # the burst goes on after what else the loop has to do
            self._handle_slot = now
            self._handle = self._loop.call_soon(self._fire)
        elif due:
            self._arm(due[0])
