"""Start-up and graceful shutdown of one serving process.

Heroku sends SIGTERM to every process of a dyno and SIGKILL 30 s later. Hypercorn's
spawned worker would die at once on it (only the supervisor handles SIGTERM), so
the app takes SIGTERM/SIGINT itself: it stops taking connections, closes every
WebSocket with 1012 and ends every SSE stream with a jittered retry hint, then
lets Hypercorn finish. The supervisor's shutdown event (or, when Hypercorn runs
in this process, its own handler) then ends the process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_drain_on_signals(loop: asyncio.AbstractEventLoop, drain: Callable[[], None]) -> None:
    """Runs ``drain`` on SIGTERM/SIGINT, then whatever handler Hypercorn had installed."""
    for sig in _SIGNALS:
        previous = _current_handler(loop, sig)

        def on_signal(sig: signal.Signals = sig, previous: Any = previous) -> None:
            log.info("%s: closing connections so clients resume elsewhere", sig.name)
            drain()
            if previous is not None:
                previous()

        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            log.debug("cannot handle %s in this thread; graceful drain is off", sig.name)


def _current_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> Callable[[], None] | None:
    """Hypercorn's own loop handler when it serves in this process (``-w 0`` or ``serve()``)."""
    handle = getattr(loop, "_signal_handlers", {}).get(sig)
    callback = getattr(handle, "_callback", None)
    if callback is None:
        return None
    args = getattr(handle, "_args", ()) or ()
    return lambda: callback(*args)
