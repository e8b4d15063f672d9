"""``Idempotency-Key`` on every POST that publishes: a retry (a timeout, a lost reply) is
answered with the first response and delivered once, on every process (the backend holds
the keys). The same key with another body is a 422 ``idempotency_mismatch``."""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Response, g, request

from hubbub.errors import BadRequest, IdempotencyInProgress, IdempotencyMismatch, Unavailable
from hubbub.hub.backends.base import BackendUnavailable
from hubbub.transports.common import require_principal, services

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
PENDING_TTL_S = 60.0  # a claim whose process died mid-request lapses after this


Handler = Callable[..., Awaitable[Response]]


def idempotent(handler: Handler) -> Handler:
    """Wraps a publishing POST handler. Without the header it runs as it is."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return await handler(*args, **kwargs)
        if not 0 < len(key) <= MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
            raise BadRequest(f"{HEADER} must be 1-{MAX_KEY_CHARS} printable ASCII characters")
        svc = services()
        principal = g.hubbub_principal = await require_principal(svc, request)
        scoped = f"{principal.user}:{key}"  # one publisher's keys never meet another's
        fingerprint = await _fingerprint()
        nonce = secrets.token_hex(8)
        backend, ttl_s = svc.hub.backend, svc.settings.idempotency_ttl_s
        try:
            state, stored = await backend.idempotency_claim(scoped, fingerprint, nonce, PENDING_TTL_S)
        except BackendUnavailable:
            raise Unavailable("the idempotency store is unreachable", retry_after=2) from None
        if state == "mismatch":
            raise IdempotencyMismatch(f"this {HEADER} was used with another request body")
        if state == "pending":
            raise IdempotencyInProgress(f"a request with this {HEADER} is still running: retry shortly",
                                        retry_after=1)
        if state == "done" and stored is not None:
            status, _, body = stored.partition(" ")
            return Response(body, status=int(status), content_type="application/json",
                            headers={"Idempotent-Replayed": "true"})
        try:
            response = await handler(*args, **kwargs)
        except BaseException:
            await _release(backend, scoped, nonce)  # it failed: a retry may run it
            raise
        body = await response.get_data(as_text=True)
        try:
            await backend.idempotency_complete(scoped, fingerprint, f"{response.status_code} {body}", ttl_s)
        except BackendUnavailable:
            pass  # published, and answered; a retry within PENDING_TTL_S is told to wait
        return response

    return wrapper


async def _fingerprint() -> str:
    body = await request.get_data(as_text=False)
    digest = hashlib.sha256()
    for part in (request.method, request.path, request.query_string.decode("latin-1"),
                 request.content_type or ""):
        digest.update(part.encode() + b"\0")
    digest.update(body if isinstance(body, bytes) else body.encode())
    return digest.hexdigest()[:32]


async def _release(backend: Any, key: str, nonce: str) -> None:
    try:
        await backend.idempotency_release(key, nonce)
    except BackendUnavailable:
        pass  # the claim lapses by itself
