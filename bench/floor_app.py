"""The floor: Hypercorn serving an ASGI app that does nothing but hold connections open.

The memory scenario measures it next to the baseline and hubbub: what one idle
connection costs the server itself (its tasks, queues, stream reader and writer,
h11/wsproto state) before any application code. hubbub's figure minus this one is
what hubbub adds. Same wire as the others: ``/ws/chat`` and ``/sse/chat`` answer
with a welcome and then wait; ``/healthz`` says ok.

Run: ``hypercorn --worker-class uvloop bench.floor_app:app``.
"""

from __future__ import annotations

from typing import Any

WELCOME = '{"type":"welcome","channel":"room:lobby"}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": WELCOME})
        while (await receive())["type"] != "websocket.disconnect":
            pass
    elif scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
    else:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": f"data: {WELCOME}\n\n".encode(),
                    "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
