"""The backend boundary: what carries messages between processes and keeps shared state.

Knows nothing about sockets or transports. ``memory`` is its executable spec;
``redis`` makes many processes act as one. Both pass tests/backends/.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from hubbub.hub.message import Cursor, History, Message

Deliver = Callable[[Message], None]


class BackendUnavailable(Exception):
    """The backend cannot be reached; nothing was published (HTTP 503, close 1013)."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket shared by every process: ``rate_per_s`` tokens a second, up to
    ``burst``; one call takes ``cost``."""

    key: str
    rate_per_s: float
    burst: int
    cost: int = 1


class Throttled(Exception):
    """The bucket was short: nothing was published. ``wait_s``: until it has the tokens."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"throttled: the tokens are there in {wait_s:.3f} s")
        self.wait_s = wait_s


class Backend(Protocol):
    name: str

    async def start(self, deliver: Deliver) -> None:
        """Begins handing every message of a subscribed channel to ``deliver``, in id order."""

    async def close(self) -> None:
        """Stops delivering and releases connections. Idempotent."""

    async def subscribe(self, channel: str) -> None:
        """This process wants ``channel``. On return, every later publish is delivered."""

    async def unsubscribe(self, channel: str) -> None:
        """This process no longer wants ``channel``."""

    async def publish(self, channel: str, body_json: str, origin: str | None = None) -> Message:
        """Assigns the id, appends to history, delivers to every process (this one too).

        ``origin`` (the publishing connection, or None) travels with the live delivery
        as ``Message.origin`` so that connection can be skipped.

        Either the message is retained and delivered, or BackendUnavailable is raised
        and it went nowhere.
        """

    async def publish_within(self, bucket: Bucket, channel: str, body_json: str,
                             origin: str | None = None) -> Message:
        """``take_token`` from ``bucket``, then ``publish``, as one atomic step (on Redis one
        script call: one round trip instead of two). Raises Throttled, nothing published,
        when the bucket is short."""

    async def publish_live(self, channel: str, body_json: str) -> None:
        """Delivers to every process without an id and without history (join, leave). At most once."""

    async def history(
        self, channels: Sequence[str], after: Cursor | None, limit: int
    ) -> History:
        """Retained messages of ``channels`` merged in id order, oldest first.

        Retention (Centrifugo's ``history_ttl``): the newest ``history_size`` messages of a
        channel are kept while it is active; once nothing was published to it for
        ``history_ttl_s``, its whole history is dropped.

        With ``after``: the first ``limit`` after it; ``recovered`` is False when the
        cursor is from another epoch or messages after it are no longer retained (trimmed
        or expired), True when nothing after it was lost, even from a dropped history.
        Without: the latest ``limit``, ``recovered`` True.
        """

    async def presence_add(self, channel: str, user: str, connection: str) -> int | None:
        """Records a live connection. When it is the user's first in ``channel`` (they joined):
        the number of users in ``channel`` now; else None."""

    async def presence_remove(self, channel: str, user: str, connection: str) -> int | None:
        """Forgets a connection. When it was the user's last in ``channel`` (they left): the
        number of users left in ``channel``; else None."""

    async def presence(self, channel: str) -> dict[str, int]:
        """Live connections per user in ``channel``, across every process."""

    async def take_token(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> float:
        """Takes ``cost`` tokens from ``key``'s bucket: 0.0 if taken, else seconds until they are.

        Idempotent per call: a retry after a lost reply does not take them twice."""

    async def idempotency_claim(self, key: str, fingerprint: str, nonce: str,
                                pending_ttl_s: float) -> tuple[str, str | None]:
        """Claims an Idempotency-Key for a request whose body hashes to ``fingerprint``.

        ("new", None): this call (``nonce``) runs the request; the claim lapses after
        ``pending_ttl_s`` unless completed. ("done", response): it already ran: answer the
        same. ("pending", None): another call runs it now. ("mismatch", None): the key was
        used with another body. Atomic across processes."""

    async def idempotency_complete(self, key: str, fingerprint: str, response: str, ttl_s: float) -> None:
        """Keeps the response of a claimed key for ``ttl_s`` seconds."""

    async def idempotency_release(self, key: str, nonce: str) -> None:
        """Forgets this call's pending claim (the request failed: a retry may run it)."""

    async def connection_add(self, user: str, connection: str, limit: int) -> bool:
        """Counts a live connection of ``user`` across every process, atomically; False (and
        nothing counted) when ``user`` already has ``limit``. A crashed process's entries
        expire on their own (Redis: within the presence TTL)."""

    async def connection_remove(self, user: str, connection: str) -> None:
        """Forgets a connection counted by ``connection_add``. Idempotent."""

    async def store_ticket(self, ticket: str, payload: str, ttl_s: float) -> None:
        """Keeps ``payload`` under ``ticket`` for ``ttl_s`` seconds."""

    async def redeem_ticket(self, ticket: str) -> str | None:
        """Returns and deletes the payload: a ticket is redeemed once, on any process."""

    async def ping(self) -> bool:
        """True when the backend is reachable."""
