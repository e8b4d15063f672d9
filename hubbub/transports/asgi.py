"""The live endpoints served straight on ASGI; everything else goes to Quart.

WebSocket and SSE subscribers stay connected for hours and are many. Quart gives
each of them two tasks, a queue and a request context for its whole life: about
14 KB per connection and a third of the connect time (docs/performance.md). The
handlers that hold connections open are small, so they run on ASGI directly, in
the one task the server gives each request. So does chat posted over HTTP
(chat_post.py), the hot half of a chat product's load. Other short requests
(history, presence, notifications, /api/publish, the demo site, /healthz,
/metrics) stay in Quart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.http import parse_cookie

from hubbub.errors import BadRequest, HubError, MethodNotAllowed
from hubbub.transports.common import Services, cors_headers
from hubbub.transports.hypercorn_bridge import END_BODY, header_block, respond

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Services, "Request", Receive, Send], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Request:
    """What a live handler reads off the scope, each part parsed once when first read. A
    handler drops its request once the connection is set up (``del request``): nothing
    read here stays for the connection's life.
    ``route``: the pattern it matched (a metrics label: never a room name)."""

    __slots__ = ("scope", "route", "_args", "_headers")

    def __init__(self, scope: Scope, route: str) -> None:
        self.scope = scope
        self.route = route
        self._args: dict[str, str] | None = None
        self._headers: Headers | None = None

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers(self.scope["headers"])
        return self._headers

    @property
    def args(self) -> dict[str, str]:
        """Query arguments; the first value of a repeated one wins."""
        if self._args is not None:
            return self._args
        args: dict[str, str] = {}
        query = self.scope["query_string"].decode("latin-1")
        if "%" in query or "+" in query:
            pairs = parse_qsl(query, keep_blank_values=True)
        else:  # nothing to unquote: what parse_qsl returns, at under half its cost
            pairs = [part.partition("=")[::2] for part in query.split("&") if part]
        for key, value in pairs:
            args.setdefault(key, value)
        self._args = args
        return args

    @property
    def cookies(self) -> dict[str, str]:
        """The request's cookies (the first of a repeated name wins)."""
        return parse_cookie(self.headers.get("Cookie") or "").to_dict()

    @property
    def host(self) -> str:
        return self.headers.get("Host") or ""

    @property
    def path(self) -> str:
        return str(self.scope["path"])


class Headers:
    """Case-insensitive ``get`` (first value wins) over an ASGI header list, indexed on the
    first ``get``: a connect looks up half a dozen names."""

    __slots__ = ("_raw", "_index")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._index: dict[bytes, bytes] | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        index = self._index
        if index is None:
            index = self._index = {}
            for key, value in self._raw:
                index.setdefault(key.lower(), value)
        found = index.get(name.lower().encode("latin-1"))
        return default if found is None else found.decode("latin-1")


def raw_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


_EVERY_RESPONSE = {"X-Content-Type-Options": "nosniff"}
_JSON = {**_EVERY_RESPONSE, "Content-Type": "application/json"}
_JSON_HEAD = header_block(raw_headers(_JSON))  # for the bridge: checked and encoded once


async def send_response(send: Send, status: int, body: bytes, headers: Mapping[str, str], *,
                        websocket: bool = False) -> None:
    """A whole HTTP response; ``websocket``: as the answer to an upgrade (a rejection)."""
    prefix = "websocket." if websocket else ""
    head = {"Content-Length": str(len(body)), **_EVERY_RESPONSE, **headers}
    await send({"type": f"{prefix}http.response.start", "status": status, "headers": raw_headers(head)})
    await send({"type": f"{prefix}http.response.body", "body": body})


async def send_json(send: Send, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    """A whole JSON response. With no headers of its own (CORS, …) the bridge writes it,
    head and body in one write (``respond``); otherwise it goes through the server."""
    if not headers and respond(send, status, _JSON_HEAD, body):
        await send(END_BODY)  # Hypercorn ends what the bridge wrote
        return
    await send_response(send, status, body, {**_JSON, **headers})


def _error_headers(error: HubError) -> dict[str, str]:
    return {"Content-Type": "application/json", **error.headers()}


async def send_error(send: Send, request: Request, settings: Any, error: HubError,
                     extra: Mapping[str, str] | None = None) -> None:
    """The JSON error response of API.md (with CORS headers for allowed origins)."""
    headers = {**_error_headers(error), **(extra or {}),
               **cors_headers(settings, request.headers.get("Origin"))}
    await send_response(send, error.status, error.body().encode(), headers)


async def reject_upgrade(send: Send, request: Request, error: HubError) -> None:
    """Refuses a WebSocket before accepting it: its HTTP status and JSON body where the
    server can send one (ASGI's websocket.http.response), else a bare 403."""
    if "websocket.http.response" in (request.scope.get("extensions") or {}):
        await send_response(send, error.status, error.body().encode(), _error_headers(error),
                            websocket=True)
    else:
        await send({"type": "websocket.close", "code": error.close_code})


class LiveRouter:
    """ASGI middleware: WebSocket and SSE endpoints by path, and every method but GET and
    HEAD on ``/api/rooms/<room>/messages`` (``messages``); the rest to the wrapped app.

    Paths are matched below ``prefix`` (``Hubbub(url_prefix=...)``) and below the
    ``root_path`` of an outer mount, as Quart matches its own routes.
    """

    def __init__(self, app: Any, svc: Services, prefix: str, websocket: Mapping[str, Handler],
                 sse: Mapping[str, Handler], messages: Handler) -> None:
        self._app: ASGIApp = app
        self._svc = svc
        self._websocket = {prefix + path: handler for path, handler in websocket.items()}
        self._sse = {prefix + path: handler for path, handler in sse.items()}
        self._messages = messages
        self._rooms = prefix + "/api/rooms/"
        self._messages_route = prefix + "/api/rooms/<room>/messages"

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The coroutine serving this request, not awaited here: a coroutine frame of the
        router's would live as long as each connection (~290 bytes). A handler that raises
        is the server's to log and answer (500, or close 1011), as for any ASGI app."""
        kind = scope["type"]
        handler: Handler | None = None
        if kind == "websocket" or kind == "http":
            path = route = scope["path"]
            root = scope.get("root_path") or ""
            if root and path.startswith(root):  # mounted: the path still carries the mount point
                path = route = path[len(root):]
            if kind == "websocket":
                handler = self._websocket.get(path)
            elif path in self._sse:
                handler = self._sse[path] if scope["method"] == "GET" else _not_get
            elif path in self._websocket:
                handler = _not_upgraded
            elif path.startswith(self._rooms) and scope["method"] not in ("GET", "HEAD") \
                    and _one_segment(path, len(self._rooms), "/messages"):
                handler, route = self._messages, self._messages_route
        if handler is None:
            return self._app(scope, receive, send)
        return handler(self._svc, Request(scope, route), receive, send)


def _one_segment(path: str, start: int, tail: str) -> bool:
    """``path[start:]`` is one non-empty segment and then ``tail`` (as Quart's ``<room>``)."""
    return path.endswith(tail) and len(path) - len(tail) > start \
        and "/" not in path[start:len(path) - len(tail)]


_ALLOW = "GET, OPTIONS"


async def _not_get(svc: Services, request: Request, receive: Receive, send: Send) -> None:
    """CORS preflight for the SSE endpoints (fetch-based readers send Last-Event-ID); else 405."""
    if request.scope["method"] == "OPTIONS":
        cors = cors_headers(svc.settings, request.headers.get("Origin"))
        await send_response(send, 200, b"", {"Allow": _ALLOW, **cors})
        return
    error = MethodNotAllowed(f"{request.scope['method']} is not allowed here: use GET")
    await send_error(send, request, svc.settings, error, {"Allow": _ALLOW})


async def _not_upgraded(svc: Services, request: Request, receive: Receive, send: Send) -> None:
    error = BadRequest(f"{request.path} is a WebSocket endpoint: connect with Upgrade: websocket")
    await send_error(send, request, svc.settings, error)
