"""``python -m app``: serves the example with Hypercorn, the signals handled by this app.

hubbub installs no signal handler of its own: here SIGTERM and SIGINT are this app's.
It logs, then lets Hypercorn shut down; hubbub sees the server stopping and closes its
WebSockets with 1012 and ends its SSE streams, so clients resume elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config

from app import create_app


async def main() -> None:
    config = Config()
    config.bind = [os.environ.get("BIND", "127.0.0.1:5000")]
    stop = asyncio.Event()

    def on_signal(name: str) -> None:
        print(f"example: {name} received, shutting down", flush=True)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    app = create_app()
    print(f"example: serving on {config.bind[0]}", flush=True)
    await serve(app, config, shutdown_trigger=stop.wait)


if __name__ == "__main__":
    asyncio.run(main())
