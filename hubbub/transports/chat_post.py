"""``POST /api/rooms/NAME/messages`` straight on ASGI, like the live endpoints (asgi.py).

Chat posted over HTTP is the hot half of a chat product's load. Served by Quart, each
POST cost about 30% more CPU (two tasks, a request context, routing and a response
object per request; docs/performance.md), so this one route runs in the task the server
gives the request. Its answers are the ones the Quart routes give: the JSON errors of
docs/api.md, CORS for allowed origins, ``nosniff``, ``Idempotency-Key``, and a body read
whole (or the connection marked to close) before a refusal goes out. GET (the history)
stays in Quart.
"""

from __future__ import annotations

import asyncio
import logging

from hubbub.errors import HubError, MethodNotAllowed, TooLarge
from hubbub.hub.message import dumps
from hubbub.transports.asgi import Receive, Request, Send, send_error, send_json, send_response
from hubbub.transports.common import Services, cors_headers, publish_chat, require_principal, valid_room
from hubbub.transports.http import BODY_DRAIN_S
from hubbub.transports.idempotency import HEADER, Reply, at_most_once, check_key, fingerprint
from hubbub.transports.inbound import chat_text_from_body

log = logging.getLogger(__name__)

ALLOW = "GET, HEAD, OPTIONS, POST"


class Disconnected(Exception):
    """The client went away before its body came whole: there is no one to answer."""


class Body:
    """The request body off ASGI ``receive``, at most ``limit`` bytes."""

    __slots__ = ("_receive", "_limit", "_declared", "complete")

    def __init__(self, receive: Receive, request: Request, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        length = request.headers.get("Content-Length")
        self._declared = int(length) if length and length.isdigit() else None
        self.complete = False

    async def read(self) -> bytes:
        if self._declared is not None and self._declared > self._limit:
            raise TooLarge(f"bodies are limited to {self._limit} bytes")
        return await self._read(keep=True)

    async def drain(self) -> bool:
        """Reads and drops what is left of the body before a refusal (see ``BODY_DRAIN_S``);
        False if it is too big, too slow or the peer is gone: the response then says
        ``Connection: close``."""
        if self.complete:
            return True
        if self._declared is not None and self._declared > self._limit:
            return False
        try:
            async with asyncio.timeout(BODY_DRAIN_S):
                await self._read(keep=False)
        except (TimeoutError, TooLarge, Disconnected):
            return False
        return True

    async def _read(self, keep: bool) -> bytes:
        chunks, size = [], 0
        while not self.complete:
            event = await self._receive()
            if event["type"] != "http.request":
                raise Disconnected
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > self._limit:  # a chunked body, or one longer than it said
                raise TooLarge(f"bodies are limited to {self._limit} bytes")
            if keep:
                chunks.append(chunk)
            self.complete = not event.get("more_body", False)
        return b"".join(chunks)


async def messages(svc: Services, request: Request, receive: Receive, send: Send) -> None:
    """Every method but GET and HEAD on a room's messages: POST publishes, OPTIONS answers a
    CORS preflight, the rest get 405."""
    method = request.scope["method"]
    cors = cors_headers(svc.settings, request.headers.get("Origin"))
    if method == "OPTIONS":
        await send_response(send, 200, b"", {"Allow": ALLOW, **cors})
        return
    body = Body(receive, request, svc.settings.max_message_bytes)
    try:
        if method != "POST":
            raise MethodNotAllowed(f"{method} is not allowed here: use GET or POST")
        reply = await _publish(svc, request, body)
    except Disconnected:
        return
    except HubError as error:
        if isinstance(error, TooLarge):
            svc.metrics.dropped.labels("too_big").inc()
        extra = {"Allow": ALLOW} if isinstance(error, MethodNotAllowed) else {}
        if request.scope.get("http_version") in ("1.0", "1.1") and not await body.drain():
            extra["Connection"] = "close"
        await send_error(send, request, svc.settings, error, extra)
        return
    except Exception as error:  # as the Quart routes answer one: logged, and a JSON 500
        log.exception("unhandled error in hubbub's %s", type(error).__name__)
        await send_error(send, request, svc.settings, HubError("unexpected server error"))
        return
    headers = {**cors, "Idempotent-Replayed": "true"} if reply.replayed else cors
    await send_json(send, reply.status, reply.body.encode(), headers)


async def _publish(svc: Services, request: Request, body: Body) -> Reply:
    room = valid_room(request.path.rsplit("/", 2)[-2])  # the router matched .../<room>/messages
    key = request.headers.get(HEADER)
    if key is not None:
        check_key(key)
    principal = await require_principal(svc, request)
    data = await body.read()
    content_type = request.headers.get("Content-Type") or ""
    text = chat_text_from_body(content_type, data)

    async def run() -> tuple[int, str]:
        message = await publish_chat(svc, principal, room, text)
        return 202, dumps({"id": message.id})

    if key is None:
        return Reply(*await run())
    query = request.scope["query_string"].decode("latin-1")
    return await at_most_once(svc, principal, key,
                              fingerprint("POST", request.path, query, content_type, data), run)

