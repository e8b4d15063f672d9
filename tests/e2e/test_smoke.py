from __future__ import annotations

from tests.conftest import LiveServer
from tests.e2e.clients import recv_json, recv_until, sse_connect, ws_connect


async def test_post_reaches_websocket_and_sse_with_the_same_id(live_server: LiveServer) -> None:
    token = live_server.token("alice")
    async with live_server.http() as client, \
            ws_connect(f"{live_server.ws_url}/ws/chat?room=lobby&token={token}") as ws, \
            sse_connect(client, f"/sse/chat?room=lobby&token={token}") as sse:
        assert (await recv_json(ws))["type"] == "welcome"
        assert (await sse.next_json())["type"] == "welcome"
        reply = await client.post("/api/rooms/lobby/messages", content=b"hi",
                                  headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 202
        message_id = reply.json()["id"]
        assert (await recv_until(ws, "chat"))["id"] == message_id
        assert (await sse.until("chat"))["id"] == message_id
