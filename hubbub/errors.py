"""Every error a client can see: its JSON code, HTTP status and WebSocket close code.

Codes and statuses come from static/protocol.json, which the browser client imports too
(hubbub/protocol.py); each error here says which code it is and how it closes a WebSocket.
``Refused`` is the one a host app raises itself (from an ``on_publish`` hook).
"""

from __future__ import annotations

from quart import Response

from hubbub.hub.message import dumps
from hubbub.protocol import CLOSE_CODES, ERROR_STATUS


class Close:
    """WebSocket close codes by name (protocol.json)."""

    NORMAL = CLOSE_CODES["normal"]
    TOO_LARGE = CLOSE_CODES["too_large"]
    INTERNAL_ERROR = CLOSE_CODES["internal_error"]
    RESTARTING = CLOSE_CODES["restarting"]
    TRY_AGAIN_LATER = CLOSE_CODES["try_again_later"]
    BAD_REQUEST = CLOSE_CODES["bad_request"]
    UNAUTHORIZED = CLOSE_CODES["unauthorized"]
    FORBIDDEN = CLOSE_CODES["forbidden"]
    TOO_MANY_CONNECTIONS = CLOSE_CODES["too_many_connections"]


class HubError(Exception):
    """A client-facing error: ``code`` and ``detail`` go in the JSON body or error frame."""

    code = "internal_error"
    status = ERROR_STATUS[code]
    close_code: int = Close.INTERNAL_ERROR

    def __init_subclass__(cls) -> None:
        cls.status = ERROR_STATUS[cls.code]  # a code missing from protocol.json fails at import

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after

    def frame(self, ref: str | None = None) -> str:
        """The WebSocket error frame; with the ``ref`` of the client frame it answers."""
        frame = {"type": "error", "code": self.code, "detail": self.detail}
        return dumps(frame if ref is None else {**frame, "ref": ref})

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
    code, close_code = "bad_request", Close.BAD_REQUEST


class Unauthorized(HubError):
    code, close_code = "unauthorized", Close.UNAUTHORIZED


class Forbidden(HubError):
    code, close_code = "forbidden", Close.FORBIDDEN


class NotFound(HubError):
    code, close_code = "not_found", Close.BAD_REQUEST


class MethodNotAllowed(HubError):
    code, close_code = "method_not_allowed", Close.BAD_REQUEST


class TooLarge(HubError):
    code, close_code = "too_large", Close.TOO_LARGE


class UnsupportedMediaType(HubError):
    code, close_code = "unsupported_media_type", Close.BAD_REQUEST


class RateLimited(HubError):
    code, close_code = "rate_limited", Close.TRY_AGAIN_LATER


class TooManyConnections(HubError):
    code, close_code = "rate_limited", Close.TOO_MANY_CONNECTIONS


class Unavailable(HubError):
    code, close_code = "unavailable", Close.TRY_AGAIN_LATER


class Refused(HubError):
    """Raised by an ``on_publish`` hook to refuse a message; its text reaches the sender
    (WebSocket: an error frame, the connection stays open; HTTP: 422)."""

    code, close_code = "refused", Close.BAD_REQUEST


class HookFailed(HubError):
    """A hook of the host app raised: logged once; the client gets an error, not a dead connection."""

    code, close_code = "internal_error", Close.INTERNAL_ERROR


class IdempotencyMismatch(HubError):
    """An Idempotency-Key used again with another body."""

    code, close_code = "idempotency_mismatch", Close.BAD_REQUEST


class IdempotencyInProgress(HubError):
    """An Idempotency-Key whose first request is still running."""

    code, close_code = "idempotency_in_progress", Close.TRY_AGAIN_LATER
