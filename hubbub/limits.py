"""Live connections: at most MAX_CONNECTIONS in this process, MAX_CONNECTIONS_PER_USER per user
across every process. (Publish rate limits are token buckets in the backend: take_token.)"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

from hubbub.errors import TooManyConnections, Unavailable
from hubbub.hub.backends.base import Backend, BackendUnavailable

FD_HEADROOM = 64  # descriptors kept for what is not a connection: listeners, Redis, logs
RETRY_AFTER_FULL_S = 5


def default_max_connections() -> int:
    """What the file-descriptor limit allows: each connection is one descriptor, and an
    accept() that fails for want of one is retried by the event loop in a tight, noisy loop."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, soft - max(FD_HEADROOM, soft // 10))


def raise_fd_limit() -> tuple[int, int]:
    """Raises the soft RLIMIT_NOFILE to the hard one (the standalone server asks for this);
    returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, hard


class ConnectionLimits:
    def __init__(self, backend: Backend, *, max_per_user: int, max_total: int,
                 on_refused: Callable[[str], None] = lambda reason: None) -> None:
        self._backend = backend
        self._max_per_user = max_per_user
        self.max_total = max_total or default_max_connections()
        self.total = 0  # live connections of this process, every endpoint
        self._on_refused = on_refused  # the metrics: "max_connections" or "per_user"

    # Plain acquire/release, not context managers: a connection holds its slots for hours,
    # and an exit stack with two suspended generators cost ~2.5 KB per idle connection.

    def acquire(self) -> None:
        """Counts a connection against MAX_CONNECTIONS; Unavailable (503) when it is full."""
        if self.total >= self.max_total:
            self._on_refused("max_connections")
            raise Unavailable(f"this server is at its limit of {self.max_total} connections",
                              retry_after=RETRY_AFTER_FULL_S)
        self.total += 1

    def release(self) -> None:
        self.total -= 1

    async def acquire_user(self, user: str, connection_id: str) -> None:
        """Counts one of ``user``'s connections, on every process at once (atomic, so two
        connections racing for the last slot cannot both get it); TooManyConnections (429)."""
        try:
            admitted = await self._backend.connection_add(user, connection_id, self._max_per_user)
        except BackendUnavailable:
            raise Unavailable("the connection registry is unreachable", retry_after=2) from None
        if not admitted:
            self._on_refused("per_user")
            raise TooManyConnections(f"at most {self._max_per_user} live connections per user",
                                     retry_after=RETRY_AFTER_FULL_S)

    async def release_user(self, user: str, connection_id: str) -> None:
        try:
            await self._backend.connection_remove(user, connection_id)
        except BackendUnavailable:
            pass  # its entry expires with the presence TTL


class LocalBucket:
    """A token bucket of this process only (one connection's own limit: no backend round trip)."""

    __slots__ = ("_rate", "_burst", "_tokens", "_stamp")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate, self._burst = rate_per_s, float(burst)
        self._tokens, self._stamp = float(burst), time.monotonic()

    def take(self) -> float:
        """0.0 if a token was taken, else seconds until one is free."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate
