"""The standalone hubbub server: the Procfile's ``app:create_app()``.

It is the ``hubbub`` library mounted at the root of an app of its own, plus what only
the owner of a process may do: settings from the environment, root logging, SIGTERM and
SIGINT, the garbage collector, the file-descriptor limit, and JSON for every error.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from app.worker_metrics import share_metrics_across_workers

share_metrics_across_workers()  # before anything imports prometheus-client

from quart import Quart, Response, request  # noqa: E402
from werkzeug.exceptions import HTTPException  # noqa: E402
from werkzeug.routing import RequestRedirect  # noqa: E402

from app.configuration import settings_from_env  # noqa: E402
from app.lifecycle import install_drain_on_signals, tune_garbage_collector, warn_if_hub_split  # noqa: E402
from app.server_logging import configure_logging, quiet_accept_failures  # noqa: E402
from hubbub import Hubbub, Settings  # noqa: E402
from hubbub.extension import json_error  # noqa: E402
from hubbub.limits import raise_fd_limit  # noqa: E402

__all__ = ["create_app"]

log = logging.getLogger("app")


def create_app(settings: Settings | None = None, *, handle_signals: bool = True) -> Quart:
    """The server. ``handle_signals=False`` leaves the process alone (tests in one process)."""
    settings = settings or settings_from_env()
    configure_logging(settings.log_level, settings.log_format)
    warn_if_hub_split(settings.redis_url)
    if handle_signals:  # serving as the process: each connection is a file descriptor
        raise_fd_limit()
        quiet_accept_failures()
    app = Quart("hubbub", static_folder=None)  # static files: hubbub/transports/site.py
    app.config["MAX_CONTENT_LENGTH"] = settings.max_message_bytes
    rt = Hubbub(app, settings=settings)
    app.hub = rt.hub  # type: ignore[attr-defined]  # for server-side code: app.hub.notify(...)
    app.extensions["hubbub.instance"] = rt
    _register_errors(app)

    if handle_signals:
        @app.before_serving
        async def own_the_process() -> None:
            install_drain_on_signals(asyncio.get_running_loop(), rt.drain)
            tune_garbage_collector()

    return app


def _register_errors(app: Quart) -> None:
    """Every response of this app is JSON, with ``nosniff``; a redirect is never built from Host."""

    @app.before_request
    async def relative_redirect() -> Response | None:
        """werkzeug's slash redirects (``/api//rooms`` → ``/api/rooms``) are RoutingExceptions,
        which never reach an error handler, and their Location names the client's Host header:
        answer them here with a path-only Location, so a forged Host cannot point off-site."""
        redirect = request.routing_exception
        if not isinstance(redirect, RequestRedirect):
            return None
        target = urlsplit(redirect.new_url)
        # One leading slash: browsers read //host and /\host as another host.
        location = "/" + target.path.lstrip("/\\") + (f"?{target.query}" if target.query else "")
        return Response("", status=redirect.code, headers={"Location": location})

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return json_error(error.code or 500, error.description or "")

    @app.errorhandler(Exception)
    async def internal_error(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "unexpected server error")

    @app.after_request
    async def nosniff(response: Response) -> Response:
        """On every response (errors included): a body echoing client input is read only as
        its declared type. The live endpoints set it on ASGI (asgi.py, sse.py)."""
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
