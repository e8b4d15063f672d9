"""What Hypercorn does not expose over ASGI: when the peer last sent a byte, protocol pings, abort.

ASGI has no ping/pong events and no way to drop a connection whose peer stopped
reading (Hypercorn has no write timeout: a send to such a peer waits forever).
``install()`` wraps Hypercorn's WebSocket and HTTP streams so each scope carries
a ``ConnectionControl`` under ``scope["extensions"]["hubbub.connection"]``.
Under another server the extension is absent and callers degrade: no idle
detection, slow consumers are only closed when their writer is free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

EXTENSION = "hubbub.connection"


class ConnectionControl:
    __slots__ = ("_stream", "last_received")

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.last_received = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the peer last sent anything (data, ping, pong or close)."""
        return time.monotonic() - self.last_received

    async def ping(self) -> None:
        """Sends a WebSocket protocol ping; browsers answer it by themselves."""
        from wsproto.events import Ping

        await self._stream._send_wsproto_event(Ping())

    def abort(self) -> None:
        """Drops the TCP connection at once, discarding unsent data."""
        # WSStream/HTTPStream.send -> H11Protocol.stream_send; its .send -> TCPServer.protocol_send.
        protocol = getattr(self._stream.send, "__self__", None)
        tcp_server = getattr(getattr(protocol, "send", None), "__self__", None)
        writer = getattr(tcp_server, "writer", None)
        if writer is not None:
            writer.transport.abort()


def control_of(scope: Mapping[str, Any]) -> ConnectionControl | None:
    extensions = scope.get("extensions") or {}
    control = extensions.get(EXTENSION)
    return control if isinstance(control, ConnectionControl) else None


def abort_later(scope: Mapping[str, Any], delay_s: float) -> asyncio.TimerHandle | None:
    """Aborts the connection after ``delay_s`` unless the returned handle is cancelled first."""
    control = control_of(scope)
    if control is None:
        return None
    return asyncio.get_running_loop().call_later(delay_s, control.abort)


def install() -> None:
    """Wraps Hypercorn's streams once per process. Safe to call again."""
    try:
        from hypercorn.protocol.events import Body, Data, Request
        from hypercorn.protocol.http_stream import HTTPStream
        from hypercorn.protocol.ws_stream import WSStream
    except ImportError:  # pragma: no cover - another server, or a Hypercorn that moved things
        log.warning("Hypercorn internals not found: idle detection and slow-client abort are off")
        return
    for cls in (WSStream, HTTPStream):
        if getattr(cls, "_hubbub_wrapped", False):
            continue
        original = cls.handle

        async def handle(self: Any, event: Any, _original: Any = original) -> None:
            if isinstance(event, Body | Data):
                control = getattr(self, "_hubbub_control", None)
                if control is not None:
                    control.last_received = time.monotonic()
            await _original(self, event)
            if isinstance(event, Request) and hasattr(self, "scope"):
                control = ConnectionControl(self)
                self._hubbub_control = control
                self.scope["extensions"][EXTENSION] = control

        cls.handle = handle  # type: ignore[method-assign]
        cls._hubbub_wrapped = True  # type: ignore[attr-defined]
