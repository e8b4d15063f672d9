"""The channels a live connection subscribes, as its endpoint and query name them.

``/ws/chat`` and ``/sse/chat`` take one room, the notifications endpoints the caller's own
channel and the broadcasts, and ``/ws?channels=…`` and ``/sse?channels=…`` a set. In a set a
client names ``room:NAME`` or ``notifications``; the hub subscribes ``room:NAME``, or the
caller's ``user:ID`` and ``broadcast``. All of them share one id clock, so one cursor
resumes the whole set.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from hubbub.auth import Principal
from hubbub.errors import BadRequest
from hubbub.hub.hub import BROADCAST, ROOM_NAME, notification_channels, room_channel
from hubbub.transports.asgi import Request
from hubbub.transports.common import Services, valid_room

NOTIFICATIONS = "notifications"

ChannelsFor = Callable[[Principal], tuple[str, ...]]  # the hub channels a caller gets; Forbidden if none
# An endpoint's reading of its query, before the caller is known: its ChannelsFor, and the room
# chat frames go to (None: they name it, or there is none); BadRequest for a malformed query.
Plan = Callable[[Services, Request], tuple[ChannelsFor, str | None]]


def kept_room_channel(room: str) -> str:
    """``room:NAME`` for a connection to keep: one string per room however many connections
    hold it (interned strings are freed with their last holder). Not on the publish path."""
    return sys.intern(room_channel(room))


def room_plan(svc: Services, request: Request) -> tuple[ChannelsFor, str | None]:
    """``?room=NAME``: the room, for callers the token lets in."""
    room = sys.intern(valid_room(request.args.get("room")))  # kept by the connection: one per room

    def channels_for(principal: Principal) -> tuple[str, ...]:
        principal.require_room(room)
        return (kept_room_channel(room),)

    return channels_for, room


def notifications_plan(svc: Services, request: Request) -> tuple[ChannelsFor, str | None]:
    """The caller's own notifications and the broadcasts."""
    return (lambda principal: notification_channels(principal.user)), None


def set_plan(svc: Services, request: Request) -> tuple[ChannelsFor, str | None]:
    """``?channels=room:lobby,notifications``: any set on one connection."""
    names = channel_list(request.args.get("channels"), svc.settings.max_channels_per_connection)
    return (lambda principal: hub_channels(names, principal)), None


def channel_name(value: object) -> str:
    """A channel as a client names it: ``room:NAME`` or ``notifications``."""
    if isinstance(value, str) and (value == NOTIFICATIONS or (
            value.startswith("room:") and ROOM_NAME.fullmatch(value[5:]))):
        return value
    shown = repr(value)[:80]
    raise BadRequest(f"a channel is 'room:NAME' (1-64 of A-Z a-z 0-9 _ . -) or 'notifications', got {shown}")


def channel_list(value: str | None, limit: int) -> tuple[str, ...]:
    """``room:lobby,room:ops,notifications``: each named once, in order, at most ``limit``."""
    items = (item.strip() for item in (value or "").split(","))
    names = tuple(dict.fromkeys(channel_name(item) for item in items if item))
    if len(names) > limit:
        raise BadRequest(f"at most {limit} channels on one connection, got {len(names)}")
    return names


def hub_channels(names: Iterable[str], principal: Principal) -> tuple[str, ...]:
    """What the hub subscribes for ``names``; Forbidden for a room the token does not allow."""
    channels: list[str] = []
    for name in names:
        if name == NOTIFICATIONS:
            channels += notification_channels(principal.user)
        else:
            principal.require_room(name[5:])
            channels.append(kept_room_channel(name[5:]))
    return tuple(channels)


def client_names(channels: Iterable[str]) -> list[str]:
    """The names a client used for the hub's ``channels``, each once, in order."""
    names = (NOTIFICATIONS if c == BROADCAST or c.startswith("user:") else c for c in channels)
    return list(dict.fromkeys(names))
