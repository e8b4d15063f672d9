"""``python -m app serve``: the production server in one command (the Procfile's).

Hypercorn with uvloop on ``$PORT``, ``WEB_CONCURRENCY`` workers, logs on stdout. The
settings are checked here first, once, so a bad one fails with one line before any
worker starts. Shutdown is the same whether SIGTERM reaches every process (Heroku) or
this one alone (``docker stop``): each worker drains as its server begins to stop.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys

from app.configuration import settings_from_env
from app.worker_metrics import VARIABLE, fresh_directory

GRACEFUL_TIMEOUT_S = 20.0  # Heroku sends SIGKILL 30 s after SIGTERM
# Connections the kernel queues until the server accepts them. Past Hypercorn's default of
# 100 the kernel drops a reconnect storm's SYNs, and clients retry those only after 1, 3,
# 7 s, while the server sits partly idle. 1024 at ~1 ms of work per resume is about a
# second of queue, well within a client's patience for its welcome (hubbub.js: 10 s).
# The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


def serve(host: str, port: int | None, workers: int | None) -> int:
    from hypercorn.config import Config
    from hypercorn.run import run

    if workers is None:
        raw = os.environ.get("WEB_CONCURRENCY", "1").strip() or "1"
        if not raw.isdigit() or int(raw) < 1:
            print(f"hubbub: configuration error: WEB_CONCURRENCY must be a whole number of at least 1, "
                  f"got {raw!r}", file=sys.stderr)
            return 2
        workers = int(raw)
    os.environ["WEB_CONCURRENCY"] = str(workers)  # what the workers count themselves by
    settings = settings_from_env()
    port = settings.port if port is None else port
    if not _free(host, port):
        print(f"hubbub: port {port} on {host} is taken: stop what uses it, or pick another "
              f"(PORT={port + 1}, or make run PORT={port + 1})", file=sys.stderr)
        return 2
    config = Config()
    config.application_path = "app:create_app()"
    config.bind = [f"{host}:{port}"]
    config.worker_class = "uvloop"
    config.workers = workers
    if settings.log_format == "json":  # through the app's JSON handler, like every other line
        config.accesslog = logging.getLogger("hypercorn.access")
        config.errorlog = logging.getLogger("hypercorn.error")
    else:
        config.accesslog = "-"  # the path only: hypercorn's default format logs no query string
        config.errorlog = "-"
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.backlog = LISTEN_BACKLOG
    metrics = None if os.environ.get(VARIABLE) else fresh_directory()  # the workers sum their metrics
    try:
        return int(run(config) or 0)
    finally:
        if metrics is not None:
            shutil.rmtree(metrics, ignore_errors=True)


def _free(host: str, port: int) -> bool:
    """Whether the port can be bound (0: any). Checked so a taken port is one clear line."""
    if port == 0:
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
