"""``Idempotency-Key`` on every POST that publishes: a retry (a timeout, a lost reply) is
answered with the first response and delivered once, on every process (the backend holds
the keys). The same key with another body is a 422 ``idempotency_mismatch``.

``at_most_once`` is the rule, for any handler; ``idempotent`` applies it to a Quart view.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from quart import Response, g, request

from hubbub.auth import Principal
from hubbub.errors import BadRequest, IdempotencyInProgress, IdempotencyMismatch, Unavailable
from hubbub.hub.backends.base import BackendUnavailable
from hubbub.transports.common import Services, require_principal, services

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
PENDING_TTL_S = 60.0  # a claim whose process died mid-request lapses after this


class Reply(NamedTuple):
    """A JSON response as stored for replays."""

    status: int
    body: str
    replayed: bool = False


def check_key(key: str) -> None:
    if not 0 < len(key) <= MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise BadRequest(f"{HEADER} must be 1-{MAX_KEY_CHARS} printable ASCII characters")


def fingerprint(method: str, path: str, query: str, content_type: str, body: bytes) -> str:
    """What makes a retry the same request: a key reused with another one is a mismatch."""
    digest = hashlib.sha256()
    for part in (method, path, query, content_type):
        digest.update(part.encode() + b"\0")
    digest.update(body)
    return digest.hexdigest()[:32]


async def at_most_once(svc: Services, principal: Principal, key: str, print_: str,
                       run: Callable[[], Awaitable[tuple[int, str]]]) -> Reply:
    """``run()``'s (status, JSON body) the first time; the stored reply for a retry with the
    same key and fingerprint. A ``run`` that raises leaves the key free for a retry."""
    scoped = f"{principal.user}:{key}"  # one publisher's keys never meet another's
    nonce = secrets.token_hex(8)
    backend = svc.hub.backend
    try:
        state, stored = await backend.idempotency_claim(scoped, print_, nonce, PENDING_TTL_S)
    except BackendUnavailable:
        raise Unavailable("the idempotency store is unreachable", retry_after=2) from None
    if state == "mismatch":
        raise IdempotencyMismatch(f"this {HEADER} was used with another request body")
    if state == "pending":
        raise IdempotencyInProgress(f"a request with this {HEADER} is still running: retry shortly",
                                    retry_after=1)
    if state == "done" and stored is not None:
        stored_status, _, stored_body = stored.partition(" ")
        return Reply(int(stored_status), stored_body, replayed=True)
    try:
        status, body = await run()
    except BaseException:
        await _release(backend, scoped, nonce)  # it failed: a retry may run it
        raise
    try:
        await backend.idempotency_complete(scoped, print_, f"{status} {body}", svc.settings.idempotency_ttl_s)
    except BackendUnavailable:
        pass  # published, and answered; a retry within PENDING_TTL_S is told to wait
    return Reply(status, body)


Handler = Callable[..., Awaitable[Response]]


def idempotent(handler: Handler) -> Handler:
    """Wraps a publishing Quart view that answers JSON. Without the header it runs as it is."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return await handler(*args, **kwargs)
        check_key(key)
        svc = services()
        principal = g.hubbub_principal = await require_principal(svc, request)
        body = await request.get_data(as_text=False)
        print_ = fingerprint(request.method, request.path, request.query_string.decode("latin-1"),
                             request.content_type or "", body if isinstance(body, bytes) else body.encode())

        first: list[Response] = []  # the view's own response, when it ran

        async def run() -> tuple[int, str]:
            response = await handler(*args, **kwargs)
            first.append(response)
            return response.status_code, await response.get_data(as_text=True)

        reply = await at_most_once(svc, principal, key, print_, run)
        if first:
            return first[0]
        return Response(reply.body, status=reply.status, content_type="application/json",
                        headers={"Idempotent-Replayed": "true"})

    return wrapper


async def _release(backend: Any, key: str, nonce: str) -> None:
    try:
        await backend.idempotency_release(key, nonce)
    except BackendUnavailable:
        pass  # the claim lapses by itself
