"""The naive baseline: a Quart hub written the way the original design notes sketch it.

A dict of connections per room; the publisher (a POST, or a WebSocket member's
``{"type":"chat","text"}`` frame, answered with ``{"type":"ack","id"}`` instead of its own
message) awaits ``websocket.send`` on every WebSocket in turn (``json.dumps`` per
client); each SSE client has an unbounded ``asyncio.Queue`` and its generator yields
one event per message. No auth (a
bearer or ``?token=`` is accepted and ignored). Same message shape as hubbub, so the
load generator drives both alike. Deliberately not optimised: it is the yardstick.

Run: ``hypercorn --worker-class uvloop 'bench.baseline_app:create_app()'``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime
from typing import Any

from quart import Quart, Response, request, websocket


def _now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def create_app() -> Quart:
    app = Quart(__name__)
    ws_clients: dict[str, set[Any]] = {}
    sse_clients: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
    ids = itertools.count(1)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "backend": "naive"}

    async def publish(room: str, text: str, skip: Any = None) -> str:
        """Fans the message out to the room, awaiting each WebSocket in turn; ``skip``: the
        sender's own WebSocket (it gets an ack instead)."""
        message = {"id": str(next(ids)), "type": "chat", "text": text,
                   "channel": f"room:{room}", "sender": None, "timestamp": _now()}
        for queue in list(sse_clients.get(room, ())):
            queue.put_nowait(message)
        for ws in list(ws_clients.get(room, ())):
            if ws is skip:
                continue
            try:
                await ws.send(json.dumps(message))
            except Exception:  # a dead connection: drop it and go on
                ws_clients.get(room, set()).discard(ws)
        return message["id"]

    @app.post("/api/rooms/<room>/messages")
    async def post_message(room: str) -> tuple[dict[str, str], int]:
        body = await request.get_json(force=True)
        return {"id": await publish(room, body["text"])}, 202

    @app.websocket("/ws/chat")
    async def ws_chat() -> None:
        room = websocket.args.get("room", "lobby")
        await websocket.accept()
        ws = websocket._get_current_object()  # type: ignore[attr-defined]  # the LocalProxy target
        ws_clients.setdefault(room, set()).add(ws)
        try:
            await ws.send(json.dumps({"type": "welcome", "channel": f"room:{room}"}))
            while True:
                frame = await websocket.receive()
                try:
                    data = json.loads(frame)
                except ValueError:
                    continue  # not JSON: nothing to do with it
                if not isinstance(data, dict) or data.get("type") != "chat":
                    continue
                if isinstance(data.get("text"), str):
                    message_id = await publish(room, data["text"], skip=ws)
                    await ws.send(json.dumps({"type": "ack", "id": message_id}))
        finally:
            ws_clients.get(room, set()).discard(ws)

    @app.get("/sse/chat")
    async def sse_chat() -> Response:
        room = request.args.get("room", "lobby")
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sse_clients.setdefault(room, set()).add(queue)

        async def events() -> Any:
            try:
                welcome = json.dumps({"type": "welcome", "channel": f"room:{room}"})
                yield f"data: {welcome}\n\n".encode()
                while True:
                    message = await queue.get()
                    yield f"id: {message['id']}\ndata: {json.dumps(message)}\n\n".encode()
            finally:
                sse_clients.get(room, set()).discard(queue)

        response = Response(events(), content_type="text/event-stream",
                            headers={"Cache-Control": "no-cache"})
        response.timeout = None
        return response

    return app
