"""What goes over the WebSocket wire: extensions negotiated, one message per frame."""

from __future__ import annotations

from tests.conftest import ServerFactory
from tests.e2e.clients import recv_json, recv_until, ws_connect


async def test_permessage_deflate_is_declined_by_default(server_factory: ServerFactory) -> None:
    server = await server_factory()
    token = server.token("alice")
    async with ws_connect(f"{server.ws_url}/ws/notifications?token={token}") as ws:  # offers deflate
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert (await recv_json(ws))["type"] == "welcome"


async def test_permessage_deflate_is_negotiated_when_enabled(server_factory: ServerFactory) -> None:
    server = await server_factory({"WEBSOCKET_COMPRESSION": "1"})
    token = server.token("alice")
    async with ws_connect(f"{server.ws_url}/ws/notifications?token={token}") as ws:
        assert ws.response is not None
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        await server.hub.notify("alice", {"n": 1})
        assert (await recv_until(ws, "notification"))["data"] == {"n": 1}


async def test_a_batch_arrives_as_one_message_per_frame(server_factory: ServerFactory) -> None:
    server = await server_factory()
    token = server.token("alice")
    async with ws_connect(f"{server.ws_url}/ws/notifications?token={token}") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        for n in range(50):  # no await yields to the writer: all 50 leave in one batch
            await server.hub.notify("alice", {"n": n})
        received = [(await recv_json(ws))["data"]["n"] for _ in range(50)]
    assert received == list(range(50))
