"""A Quart app of its own, with hubbub mounted at /rt (docs/embedding.md walks through it).

It has an ``app`` package, a login page with a cookie session, a WebSocket of its own
and its own shutdown: hubbub adds its endpoints under /rt and touches nothing else.
Users sign in here, never with a JWT: hubbub asks this app who they are
(``@rt.authenticate``) and lets it check and keep every chat message (``@rt.on_publish``).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from quart import Quart, Response, redirect, request, session, websocket

from app.store import ChatStore
from hubbub import Hubbub, Principal, Refused, RequestLike, Settings

USER_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
BANNED_WORDS = ("spam",)


def create_app() -> Quart:
    app = Quart(__name__)
    app.secret_key = os.environ.get("SECRET_KEY") or secrets.token_hex(32)
    store = ChatStore(Path(os.environ.get("CHAT_DB", "chat.sqlite3")))
    # No JWT_SECRET: users sign in with this app's session, so no token is ever issued;
    # demo_login=False keeps hubbub's development login (anyone as anyone) off.
    rt = Hubbub(app, url_prefix="/rt", settings=Settings(demo_login=False))
    app.extensions["rt"] = rt

    @rt.authenticate
    async def from_session(req: RequestLike) -> Principal | None:
        """The user this app signed in, from its own session cookie: on /rt's HTTP, WebSocket
        and SSE endpoints alike (Quart's session interface reads only ``req.cookies``)."""
        cookie_session = await app.session_interface.open_session(app, req)  # type: ignore[arg-type]
        user = cookie_session.get("user") if cookie_session is not None else None
        return Principal(user) if isinstance(user, str) else None

    @rt.on_publish
    async def check_and_keep(principal: Principal, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        """Every chat message, before anyone sees it: refused, or kept in SQLite and published."""
        if message.get("type") == "chat":
            text = str(message["text"]).strip()
            if any(word in text.lower() for word in BANNED_WORDS):
                raise Refused("that word is not welcome here")
            await store.add(channel, principal.user, text)
            message = {**message, "text": text}
        return message

    @app.before_serving
    async def open_store() -> None:
        await store.open()

    @app.get("/")
    async def index() -> Response | str:
        user = session.get("user")
        if not user:
            return LOGIN_PAGE
        return CHAT_PAGE.replace("{user}", escape(user))

    @app.post("/login")
    async def login() -> Response:
        form = await request.form
        user = form.get("user", "")
        if not USER_NAME.fullmatch(user):
            return Response("a name is 1-32 of A-Z a-z 0-9 _ . -", status=400)
        session["user"] = user
        return redirect("/")

    @app.post("/logout")
    async def logout() -> Response:
        session.clear()
        return redirect("/")

    @app.get("/kept")
    async def kept() -> dict[str, Any]:
        """What the hook stored: this app's own record of the conversation."""
        return {"messages": await store.recent()}

    @app.websocket("/ws/clock")
    async def clock() -> None:
        """A WebSocket of this app's own: it keeps permessage-deflate, whatever hubbub does."""
        while True:
            await websocket.send(datetime.now(UTC).isoformat())
            await asyncio.sleep(1)

    return app


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
  <form method="post" action="/login">
    <label>Your name <input name="user" required pattern="[A-Za-z0-9_.\\-]{1,32}"></label>
    <button>Sign in</button>
  </form>
</body></html>
"""

CHAT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Chat</title></head>
<body>
  <p>Signed in as <b id="me">{user}</b>.
     <form method="post" action="/logout" style="display:inline"><button>Sign out</button></form></p>
  <p>Connection: <span id="state">closed</span></p>
  <ul id="messages"></ul>
  <form id="send"><input id="text" autocomplete="off" required><button>Send</button></form>
  <p id="error" role="alert"></p>
  <script type="module" src="/static/chat.js"></script>
</body></html>
"""
