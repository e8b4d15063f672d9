"""One loop timer for every connection's heartbeat: a hashed timer wheel.

Each live connection wakes every ``HEARTBEAT_INTERVAL`` (and at token expiry). With a
loop timer each, 15,000 idle connections keep 15,000 ``TimerHandle``s (and, under uvloop,
as many libuv timers) and pay a heap insertion and removal per beat. Here a connection is
an entry in the set of its slot, ``GRANULARITY_S`` wide, and one loop timer fires per
occupied slot: a beat costs a set insertion and a call, and a connection that ends is
discarded from its slot at once. Beats run up to one slot late, never early.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from typing import Protocol

log = logging.getLogger(__name__)

GRANULARITY_S = 0.05  # the finest HEARTBEAT_INTERVAL allowed (config.py) still beats on time


class Ticking(Protocol):
    def tick(self) -> None: ...


class TimerWheel:
    """Calls ``item.tick()`` once per ``add``, ``delay`` seconds later (to within a slot)."""

    __slots__ = ("granularity", "_loop", "_slots", "_due", "_handle", "_handle_slot", "_firing")

    def __init__(self, granularity_s: float = GRANULARITY_S) -> None:
        self.granularity = granularity_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[int, set[Ticking]] = {}
        self._due: list[int] = []  # the occupied slots, a heap
        self._handle: asyncio.TimerHandle | None = None
        self._handle_slot = -1
        self._firing = -1  # the last slot run: what is added now goes after it

    def __len__(self) -> int:
        return sum(len(items) for items in self._slots.values())

    def add(self, item: Ticking, delay_s: float) -> int:
        """Schedules one ``item.tick()``; the slot it returns is what ``remove`` needs."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new loop (an app served again, tests)
            self._reset(loop)
        slot = max(math.ceil((loop.time() + max(delay_s, 0.0)) / self.granularity), self._firing + 1)
        items = self._slots.get(slot)
        if items is None:
            items = self._slots[slot] = set()
            heapq.heappush(self._due, slot)
            if self._handle is None or slot < self._handle_slot:
                self._arm(slot)
        items.add(item)
        return slot

    def remove(self, item: Ticking, slot: int) -> None:
        """Forgets a scheduled tick (an emptied slot is dropped when its time comes)."""
        items = self._slots.get(slot)
        if items is not None:
            items.discard(item)

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
        # The loop may run a timer a little before its time: the slot it was set for is due.
        now = self._firing = max(math.floor(self._loop.time() / self.granularity), self._handle_slot)
        due = self._due
        while due and due[0] <= now:
            for item in self._slots.pop(heapq.heappop(due), ()):
                try:
                    item.tick()
                except Exception:  # one connection's fault must not stop everyone's heartbeat
                    log.exception("heartbeat of %r failed", item)
        while due and not self._slots.get(due[0]):  # emptied by remove(): nothing to wake for
            self._slots.pop(heapq.heappop(due), None)
        if due:
            self._arm(due[0])
