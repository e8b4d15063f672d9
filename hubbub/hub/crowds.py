"""Presence that costs a room linearly, however many join it.

Every ``join``/``leave`` frame goes to every member, so a room whose N users all connect
(a deploy, an event starting) costs N²/2 frames: 12.5 million for 5,000. Up to
``join_limit`` members a room announces each join and leave as it happens; beyond it, the
joins and leaves of an interval are gathered into one ``presence`` frame per process
(the member count and who came and went), so the cost grows with the changes, not with
the members times the changes. A quiet room (``quiet`` patterns) announces neither.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hubbub.hub.message import dumps

log = logging.getLogger(__name__)

NAMES_PER_FRAME = 100  # who came and went, at most this many each; the count is always there


@dataclass
class _Changes:
    count: int = 0
    joined: dict[str, None] = field(default_factory=dict)  # ordered sets
    left: dict[str, None] = field(default_factory=dict)


def presence_update_frame(channel: str, changes: _Changes) -> str:
    return dumps({"type": "presence", "channel": channel, "count": changes.count,
                  "joined": list(changes.joined)[:NAMES_PER_FRAME],
                  "left": list(changes.left)[:NAMES_PER_FRAME]})


class Crowds:
    """Decides, per join and leave, whether it is announced now, gathered or not told."""

    def __init__(self, publish_live: Callable[[str, str], Awaitable[None]], *, join_limit: int,
                 interval_s: float, quiet: tuple[str, ...]) -> None:
        self._publish_live = publish_live
        self.join_limit = join_limit
        self._interval_s = interval_s
        self._quiet = quiet
        self._changes: dict[str, _Changes] = {}
        self._due: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None

    def quiet(self, channel: str) -> bool:
        return any(fnmatch.fnmatchcase(channel.partition(":")[2], pattern) for pattern in self._quiet)

    def announces(self, channel: str, members: int) -> bool:
        """Whether a join (``members`` after it) or a leave (``members`` before it) goes out now."""
        return members <= self.join_limit and not self.quiet(channel)

    def joined(self, channel: str, user: str, members: int) -> None:
        """A join not announced: told in the next ``presence`` frame (unless the room is quiet)."""
        changes = self._gather(channel, members)
        if changes is None:
            return
        if user in changes.left:
            del changes.left[user]  # left and came back within the interval: no change
        else:
            changes.joined[user] = None

    def left(self, channel: str, user: str, members: int) -> None:
        changes = self._gather(channel, members)
        if changes is None:
            return
        if user in changes.joined:
            del changes.joined[user]
        else:
            changes.left[user] = None

    def _gather(self, channel: str, members: int) -> _Changes | None:
        if self.quiet(channel):
            return None
        changes = self._changes.setdefault(channel, _Changes())
        changes.count = members
        if self._due is None:
            self._due = asyncio.get_running_loop().call_later(self._interval_s, self._send_due)
        return changes

    def _send_due(self) -> None:
        self._due = None
        due, self._changes = self._changes, {}
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send(due))
        else:  # the last batch is still going out: these wait for the next interval
            for channel, changes in due.items():
                self._changes.setdefault(channel, changes)
            self._due = asyncio.get_running_loop().call_later(self._interval_s, self._send_due)

    async def _send(self, due: dict[str, _Changes]) -> None:
        for channel, changes in due.items():
            try:
                await self._publish_live(channel, presence_update_frame(channel, changes))
            except Exception:  # a backend outage: presence is best effort, like join/leave
                log.info("presence update for %s not sent", channel, exc_info=True)

    def close(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if self._sending is not None:
            self._sending.cancel()
        self._changes.clear()
