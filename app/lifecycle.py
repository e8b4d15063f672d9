"""Start-up and graceful shutdown of one serving process.

Heroku sends SIGTERM to every process of a dyno and SIGKILL 30 s later. Hypercorn's
spawned worker would die at once on it (only the supervisor handles SIGTERM), so
the app takes SIGTERM/SIGINT itself: it stops taking connections, closes every
WebSocket with 1012 and ends every SSE stream with a jittered retry hint, then
lets Hypercorn finish. The supervisor's shutdown event (or, when Hypercorn runs
in this process, its own handler) then ends the process.

At start-up it also says loudly when several workers would run without REDIS_URL:
each would hold a hub of its own.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
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

        raw = signal.getsignal(sig)
        if previous is None and not hasattr(loop, "_signal_handlers") and callable(raw):
            # uvloop keeps its loop handlers (Hypercorn's, with -w 0) out of reach, but its
            # Python-level dispatcher runs them: drain first, then let it go on.
            def on_raw(signum: int, frame: Any, raw: Any = raw, sig: signal.Signals = sig) -> None:
                loop.call_soon_threadsafe(on_signal, sig, None)
                raw(signum, frame)

            signal.signal(sig, on_raw)
            continue
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


def tune_garbage_collector() -> None:
    """Fewer, rarer cycle collections: each connection holds dozens of long-lived objects,
    and a full collection over thousands of them paused delivery for ~180 ms (p99 latency).
    Start-up objects are frozen out of collection for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_YOUNG, 20, 50)


GC_THRESHOLD_YOUNG = 50_000  # CPython's default: 700 allocations


# -- how many workers serve this app ------------------------------------------------------

SPLIT_HUB_WARNING = ("%d workers (%s) without REDIS_URL: the hub would be split: each worker "
                     "would only see its own connections; set REDIS_URL")


def hypercorn_workers(argv: Sequence[str]) -> int | None:
    """The worker count a ``hypercorn`` command line asks for (default 1); None if it is not one.

    Knows ``hypercorn ...`` (any path) and ``python -m hypercorn ...``, and the forms
    ``-w N``, ``-wN``, ``--workers N``, ``--workers=N``; the last one wins, as in argparse.
    """
    start = None
    for i, arg in enumerate(argv):
        if Path(arg).name in ("hypercorn", "hypercorn.exe") or (
                arg == "hypercorn" and i > 0 and argv[i - 1] == "-m"):
            start = i + 1
            break
    if start is None:
        return None
    workers = 1
    args = list(argv[start:])
    for i, arg in enumerate(args):
        value: str | None = None
        if arg in ("-w", "--workers"):
            value = args[i + 1] if i + 1 < len(args) else None
        elif arg.startswith("--workers="):
            value = arg.partition("=")[2]
        elif arg.startswith("-w") and not arg.startswith("--"):
            value = arg[2:]
        if value is not None and value.strip().isdigit():
            workers = int(value)
    return max(workers, 1)  # --workers 0: Hypercorn serves in its one process


def server_command_line() -> list[str] | None:
    """The command line that started the server: the parent's for a spawned worker, else ours.

    Hypercorn's workers are ``multiprocessing`` spawns of its supervisor, so their own
    command line says nothing; the supervisor's is in /proc (Linux). None when unreadable.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return list(sys.argv)
    try:
        raw = Path(f"/proc/{parent.pid}/cmdline").read_bytes()
    except OSError:  # not Linux, or the parent is gone
        return None
    return [arg.decode(errors="replace") for arg in raw.rstrip(b"\0").split(b"\0")]


def worker_count(env: Mapping[str, str], command_line: Sequence[str] | None) -> tuple[int, str]:
    """How many processes serve the app, and what says so.

    A Hypercorn command line is the authority: Hypercorn ignores WEB_CONCURRENCY, which
    Heroku's Python buildpack sets on every dyno anyway. Otherwise WEB_CONCURRENCY, the
    variable Gunicorn and Uvicorn read.
    """
    workers = hypercorn_workers(command_line) if command_line is not None else None
    if workers is not None:
        return workers, f"hypercorn --workers {workers}"
    raw = env.get("WEB_CONCURRENCY", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw), f"WEB_CONCURRENCY={int(raw)}"
    return 1, "one process"


def warn_if_hub_split(redis_url: str | None, env: Mapping[str, str] | None = None,
                      command_line: Sequence[str] | None = None) -> bool:
    """Logs a WARNING when several workers would run without Redis; True if it did."""
    if redis_url:
        return False
    if env is None:
        env = os.environ
    if command_line is None:
        command_line = server_command_line()
    workers, source = worker_count(env, command_line)
    if workers <= 1:
        return False
    log.warning(SPLIT_HUB_WARNING, workers, source)
    return True
