"""Logging of the standalone server, which owns the process: the root handler, levels,
redaction on every handler, and asyncio's failed accept() kept from flooding the log."""

from __future__ import annotations

import logging

from hubbub.observability import OncePerInterval, RedactingFilter


def quiet_accept_failures() -> None:
    """Once every 10 s at most: "socket.accept() out of system resource" (EMFILE, ENFILE)."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, OncePerInterval) for f in logger.filters):
        logger.addFilter(OncePerInterval("socket.accept() out of system resource"))


def _not_hypercorn(record: logging.LogRecord) -> bool:
    """Hypercorn writes its own log lines (--error-logfile, --access-logfile): not twice."""
    return not record.name.startswith("hypercorn.")


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        root.handlers[0].addFilter(_not_hypercorn)
    root.setLevel(level)
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    for name in ("hypercorn.access", "hypercorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
