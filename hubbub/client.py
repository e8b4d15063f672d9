"""Publishing from a backend: a Celery task, a Django view, a cron job.

Over HTTP (``Publisher``, ``AsyncPublisher``; needs httpx: ``pip install "hubbub[client]"``):

    pub = Publisher("https://rt.example.com", api_key="…")        # or token="…" (scope publish)
    pub.publish("room:orders", {"id": 42, "status": "shipped"}, type="order_updated")  # -> id
    pub.notify("bob", {"message": "New product created"})
    pub.broadcast({"message": "Deploy at 5"})

Every call carries an Idempotency-Key and is retried with backoff on 429 and 503
(honouring Retry-After) and on connection errors, so a retry never doubles a message.

Straight through the Redis the servers share (``RedisEmitter``, ``AsyncRedisEmitter``),
for processes that serve no HTTP: the same Lua script as a server's publish, so ids,
history, resume and delivery are identical. Give it the servers' REDIS_PREFIX,
HISTORY_SIZE and HISTORY_TTL.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hubbub.hub.hub import BROADCAST, check_channel, user_channel
from hubbub.hub.message import check_event_type, dumps, encode_body, format_id

if TYPE_CHECKING:
    import httpx

__all__ = ["AsyncPublisher", "AsyncRedisEmitter", "BadRequest", "Forbidden", "HubbubError",
           "IdempotencyMismatch", "Publisher", "RateLimited", "RedisEmitter", "Refused", "Unauthorized",
           "Unavailable"]

RETRIES = 4
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 10.0
RETRY_AFTER_MAX_S = 30.0
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


# -- errors --------------------------------------------------------------------------------


class HubbubError(Exception):
    """The hub refused a call (or could not be reached): ``status``, ``code``, ``detail``."""

    def __init__(self, status: int, code: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.retry_after = status, code, detail, retry_after


class BadRequest(HubbubError):
    """400 (or 413, 415): the event is malformed; fix it, do not retry."""


class Unauthorized(HubbubError):
    """401: no key or token, an unknown key, an expired token."""


class Forbidden(HubbubError):
    """403: the token lacks the scope (publish, notify) or the room."""


class Refused(HubbubError):
    """422 refused: the server's on_publish hook said no."""


class IdempotencyMismatch(HubbubError):
    """422 idempotency_mismatch: the key was used before with another body."""


class RateLimited(HubbubError):
    """429 after the retries: ``retry_after`` says when to come back."""


class Unavailable(HubbubError):
    """503 after the retries, or the hub could not be reached at all (status 0)."""


_ERRORS: dict[int, type[HubbubError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 413: BadRequest,
                                         415: BadRequest, 429: RateLimited, 503: Unavailable}


def _error(status: int, body: Mapping[str, Any], retry_after: float | None) -> HubbubError:
    code, detail = str(body.get("error", "error")), str(body.get("detail", ""))
    if code == "idempotency_mismatch":
        return IdempotencyMismatch(status, code, detail)
    if code == "refused":
        return Refused(status, code, detail)
    return _ERRORS.get(status, HubbubError)(status, code, detail, retry_after)


# -- over HTTP --------------------------------------------------------------------------------


def _event(channel: str, data: Any, type: str) -> dict[str, Any]:
    check_channel(channel)
    check_event_type(type)
    return {"channel": channel, "type": type, "data": data}


def _headers(api_key: str | None, token: str | None) -> dict[str, str]:
    if (api_key is None) == (token is None):
        raise ValueError("give api_key or token (a JWT with scope publish), not both")
    return {"X-API-Key": api_key} if api_key is not None else {"Authorization": f"Bearer {token}"}


def _delay(attempt: int, retry_after: str | None) -> float:
    """Seconds before retry ``attempt`` (1, 2, …): Retry-After when the hub gave one, else
    exponential backoff with jitter, never 0."""
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), RETRY_AFTER_MAX_S)
        except ValueError:
            pass
    ceiling = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def _result(response: httpx.Response) -> Any:
    body = _json(response)
    if response.status_code >= 400:
        retry_after = response.headers.get("Retry-After")
        raise _error(response.status_code, body if isinstance(body, dict) else {},
                     float(retry_after) if retry_after and retry_after.isdigit() else None)
    return body


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"error": "bad_reply", "detail": response.text[:200]}


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError('the HTTP publisher needs httpx: pip install "hubbub[client]"') from None
    return httpx


class Publisher:
    """Publishes over HTTP, blocking (Celery tasks, Django views, scripts)."""

    def __init__(self, url: str, *, api_key: str | None = None, token: str | None = None,
                 timeout: float = 10.0, retries: int = RETRIES, transport: Any = None) -> None:
        httpx = _import_httpx()
        self._retries = retries
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=transport,
                                    headers=_headers(api_key, token))

    def publish(self, channel: str, data: Any = None, *, type: str = "event") -> str:
        """Publishes ``{"type", "data"}`` to ``room:NAME``, ``user:ID`` or ``broadcast``; its id."""
        return str(self._post("/api/publish", _event(channel, data, type))["id"])

    def publish_many(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Up to 100 events ``{"channel", "type", "data"}`` in one request; their ids."""
        batch = [_event(e["channel"], e.get("data"), e.get("type", "event")) for e in events]
        return [str(i) for i in self._post("/api/publish", batch)["ids"]]

    def notify(self, user: str, data: Any) -> str:
        check_channel(user_channel(user))
        return str(self._post("/api/notifications", {"user": user, "data": data})["id"])

    def broadcast(self, data: Any) -> str:
        return str(self._post("/api/notifications", {"broadcast": True, "data": data})["id"])

    def _post(self, path: str, body: Any) -> Any:
        httpx = _import_httpx()
        headers = {"Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/json"}
        content = dumps(body).encode()
        for attempt in range(1, self._retries + 2):
            last = attempt > self._retries
            try:
                response = self._client.post(path, content=content, headers=headers)
            except httpx.TransportError as error:
                if last:
                    raise Unavailable(0, "unreachable", str(error)) from error
                time.sleep(_delay(attempt, None))
                continue
            if response.status_code in _RETRY_STATUSES and not last:
                time.sleep(_delay(attempt, response.headers.get("Retry-After")))
                continue
            return _result(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher:
    """Publishes over HTTP from asyncio code."""

    def __init__(self, url: str, *, api_key: str | None = None, token: str | None = None,
                 timeout: float = 10.0, retries: int = RETRIES, transport: Any = None) -> None:
        httpx = _import_httpx()
        self._retries = retries
        self._client = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout, transport=transport,
                                         headers=_headers(api_key, token))

    async def publish(self, channel: str, data: Any = None, *, type: str = "event") -> str:
        return str((await self._post("/api/publish", _event(channel, data, type)))["id"])

    async def publish_many(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        batch = [_event(e["channel"], e.get("data"), e.get("type", "event")) for e in events]
        return [str(i) for i in (await self._post("/api/publish", batch))["ids"]]

    async def notify(self, user: str, data: Any) -> str:
        check_channel(user_channel(user))
        return str((await self._post("/api/notifications", {"user": user, "data": data}))["id"])

    async def broadcast(self, data: Any) -> str:
        return str((await self._post("/api/notifications", {"broadcast": True, "data": data}))["id"])

    async def _post(self, path: str, body: Any) -> Any:
        httpx = _import_httpx()
        headers = {"Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/json"}
        content = dumps(body).encode()
        for attempt in range(1, self._retries + 2):
            last = attempt > self._retries
            try:
                response = await self._client.post(path, content=content, headers=headers)
            except httpx.TransportError as error:
                if last:
                    raise Unavailable(0, "unreachable", str(error)) from error
                await asyncio.sleep(_delay(attempt, None))
                continue
            if response.status_code in _RETRY_STATUSES and not last:
                await asyncio.sleep(_delay(attempt, response.headers.get("Retry-After")))
                continue
            return _result(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- through Redis ---------------------------------------------------------------------------


class _Emitter:
    """What both emitters share: the servers' settings, and a message made as a server makes it."""

    def __init__(self, prefix: str, history_size: int, history_ttl_s: float) -> None:
        self._prefix, self._size, self._ttl_s = prefix, history_size, history_ttl_s

    def _call(self, channel: str, message: dict[str, Any], sender: str | None) -> tuple[list[str], list[Any]]:
        from hubbub.hub.backends.redis_scripts import publish_call

        body = encode_body(check_channel(channel), message, sender)
        return publish_call(self._prefix, channel, body, history_size=self._size, history_ttl_s=self._ttl_s,
                            emitted=True)


def _tls_options(url: str) -> dict[str, Any]:
    # Heroku Redis has self-signed certificates; the option is a TypeError on redis://.
    return {"ssl_cert_reqs": "none"} if url.startswith("rediss://") else {}


class RedisEmitter(_Emitter):
    """Publishes through the shared Redis, blocking: for workers that serve no HTTP."""

    def __init__(self, url: str, prefix: str = "hubbub:", *, history_size: int = 1000,
                 history_ttl_s: float = 3600.0) -> None:
        import redis

        from hubbub.hub.backends.redis_scripts import PUBLISH_LUA

        super().__init__(prefix, history_size, history_ttl_s)
        self._client = redis.Redis.from_url(url, decode_responses=True, **_tls_options(url))
        self._script = self._client.register_script(PUBLISH_LUA)

    def publish(self, channel: str, data: Any = None, *, type: str = "event",
                sender: str | None = None) -> str:
        check_event_type(type)
        keys, args = self._call(channel, {"type": type, "data": data}, sender)
        epoch, seq = self._script(keys=keys, args=args)
        return format_id(epoch, seq)

    def notify(self, user: str, data: Any) -> str:
        return self.publish(user_channel(user), data, type="notification")

    def broadcast(self, data: Any) -> str:
        return self.publish(BROADCAST, data, type="notification")

    def close(self) -> None:
        self._client.close()


class AsyncRedisEmitter(_Emitter):
    """Publishes through the shared Redis from asyncio code."""

    def __init__(self, url: str, prefix: str = "hubbub:", *, history_size: int = 1000,
                 history_ttl_s: float = 3600.0) -> None:
        import redis.asyncio as aioredis

        from hubbub.hub.backends.redis_scripts import PUBLISH_LUA

        super().__init__(prefix, history_size, history_ttl_s)
        self._client = aioredis.from_url(url, decode_responses=True, **_tls_options(url))
        self._script = self._client.register_script(PUBLISH_LUA)

    async def publish(self, channel: str, data: Any = None, *, type: str = "event",
                      sender: str | None = None) -> str:
        check_event_type(type)
        keys, args = self._call(channel, {"type": type, "data": data}, sender)
        epoch, seq = await self._script(keys=keys, args=args)
        return format_id(epoch, seq)

    async def notify(self, user: str, data: Any) -> str:
        return await self.publish(user_channel(user), data, type="notification")

    async def broadcast(self, data: Any) -> str:
        return await self.publish(BROADCAST, data, type="notification")

    async def aclose(self) -> None:
        await self._client.aclose()
