"""The floor: Hypercorn serving an ASGI app that does no work of its own.

What the server itself costs before any application code, measured beside the others:
- an idle connection (its tasks, queues, stream reader and writer, h11/wsproto state): the
  memory and idle scenarios;
- a connect (request parsed, response head and welcome sent): the main scenario;
- taking a chat message in (a POST answered 202, a WebSocket frame answered with an ack),
  with no fan-out: the many-rooms scenario.

hubbub's figure minus the floor's is what hubbub adds. Same wire as the others: ``/ws/chat``
and ``/sse/chat`` answer with a welcome and then wait; ``/healthz`` says ok.

Run: ``hypercorn --worker-class uvloop bench.floor_app:app``.
"""

from __future__ import annotations

import json
from typing import Any

WELCOME = '{"type":"welcome","channel":"room:lobby"}'
# As long as hubbub's: an id of the same form (and a ref: null in the ack).
ID = '{"id":"1764900000000-0"}'
ACK = '{"type":"ack","id":"1764900000000-0","ref":null}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": WELCOME})
        while (event := await receive())["type"] != "websocket.disconnect":
            json.loads(event.get("text") or event.get("bytes") or "null")  # read, as any app must
            await send({"type": "websocket.send", "text": ACK})
    elif scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
    elif scope["method"] == "POST":
        body, more = b"", True
        while more:
            event = await receive()
            body += event.get("body", b"")
            more = event.get("more_body", False)
        json.loads(body or b"null")
        await send({"type": "http.response.start", "status": 202,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(ID)).encode())]})
        await send({"type": "http.response.body", "body": ID.encode()})
    else:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": f"data: {WELCOME}\n\n".encode(),
                    "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
