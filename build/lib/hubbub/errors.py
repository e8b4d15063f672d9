"""Every error a client can see: its JSON code, HTTP status and WebSocket close code, in one table.

Mirrored by ``CLOSE_CODES`` / ``ERROR_CODES`` in static/hubbub.js.
``Refused`` is the one a host app raises itself (from an ``on_publish`` hook).
"""

from __future__ import annotations

from enum import IntEnum

from quart import Response

from hubbub.hub.message import dumps


class Close(IntEnum):
    NORMAL = 1000
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_REQUEST = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    TOO_MANY_CONNECTIONS = 4429


class HubError(Exception):
    """A client-facing error: ``code`` and ``detail`` go in the JSON body or error frame."""

    code = "internal_error"
    status = 500
    close_code: int = Close.INTERNAL_ERROR

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after

    def frame(self) -> str:
        """The WebSocket error frame."""
        return dumps({"type": "error", "code": self.code, "detail": self.detail})

    def headers(self) -> dict[str, str]:
        """The headers its HTTP status calls for."""
        headers = {}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="hubbub"'
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(self.retry_after + 0.999)))
        return headers

    def body(self) -> str:
        """The HTTP error body."""
        return dumps({"error": self.code, "detail": self.detail})

    def response(self) -> Response:
        """The HTTP error response (Quart)."""
        return Response(self.body(), status=self.status, content_type="application/json",
                        headers=self.headers())


class BadRequest(HubError):
    code, status, close_code = "bad_request", 400, Close.BAD_REQUEST


class Unauthorized(HubError):
    code, status, close_code = "unauthorized", 401, Close.UNAUTHORIZED


class Forbidden(HubError):
    code, status, close_code = "forbidden", 403, Close.FORBIDDEN


class NotFound(HubError):
    code, status, close_code = "not_found", 404, Close.BAD_REQUEST


class MethodNotAllowed(HubError):
    code, status, close_code = "method_not_allowed", 405, Close.BAD_REQUEST


class TooLarge(HubError):
    code, status, close_code = "too_large", 413, Close.TOO_BIG


class UnsupportedMediaType(HubError):
    code, status, close_code = "unsupported_media_type", 415, Close.BAD_REQUEST


class RateLimited(HubError):
    code, status, close_code = "rate_limited", 429, Close.TRY_AGAIN_LATER


class TooManyConnections(HubError):
    code, status, close_code = "rate_limited", 429, Close.TOO_MANY_CONNECTIONS


class Unavailable(HubError):
    code, status, close_code = "unavailable", 503, Close.TRY_AGAIN_LATER


class Refused(HubError):
    """Raised by an ``on_publish`` hook to refuse a message; its text reaches the sender
    (WebSocket: an error frame, the connection stays open; HTTP: 422)."""

    code, status, close_code = "refused", 422, Close.BAD_REQUEST


class HookFailed(HubError):
    """A hook of the host app raised: logged once; the client gets an error, not a dead connection."""

    code, status, close_code = "internal_error", 500, Close.INTERNAL_ERROR


class IdempotencyMismatch(HubError):
    """An Idempotency-Key used again with another body."""

    code, status, close_code = "idempotency_mismatch", 422, Close.BAD_REQUEST


class IdempotencyInProgress(HubError):
    """An Idempotency-Key whose first request is still running."""

    code, status, close_code = "idempotency_in_progress", 409, Close.TRY_AGAIN_LATER
