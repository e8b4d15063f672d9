"""Live connections per user. (Chat rate limits are token buckets in the backend: take_token.)"""

from __future__ import annotations

from collections import Counter

from app.errors import TooManyConnections


class ConnectionLimiter:
    """Counts this process's live WebSocket and SSE connections per user."""

    def __init__(self, max_per_user: int) -> None:
        self._max = max_per_user
        self._counts: Counter[str] = Counter()

    def check(self, user: str) -> None:
        """Raises TooManyConnections when ``user`` has no connection to spare."""
        if self._counts[user] >= self._max:
            raise TooManyConnections(
                f"at most {self._max} live connections per user", retry_after=5
            )

    def acquire(self, user: str) -> None:
        """Counts a connection; callers check() first, before upgrading or streaming."""
        self._counts[user] += 1

    def release(self, user: str) -> None:
        self._counts[user] -= 1
        if self._counts[user] <= 0:
            del self._counts[user]

    def total(self) -> int:
        return sum(self._counts.values())
