"""Logging of the standalone server, which owns the process: the root handler, levels,
redaction on every handler, and asyncio's failed accept() kept from flooding the log."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from hubbub.observability import OncePerInterval, RedactingFilter


def quiet_accept_failures() -> None:
    """Once every 10 s at most: "socket.accept() out of system resource" (EMFILE, ENFILE)."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, OncePerInterval) for f in logger.filters):
        logger.addFilter(OncePerInterval("socket.accept() out of system resource"))


def _not_hypercorn(record: logging.LogRecord) -> bool:
    """Hypercorn writes its own log lines (--error-logfile, --access-logfile): not twice."""
    return not record.name.startswith("hypercorn.")


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a record's ``fields``
    (connection lines). An access line keeps only what names no secret: Hypercorn hands
    every header and environment variable to its access format."""

    ACCESS_FIELDS = {"h": "remote", "m": "method", "U": "path", "H": "protocol", "s": "status",
                     "b": "bytes", "L": "duration_s", "a": "user_agent"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name}
        if record.name == "hypercorn.access" and isinstance(record.args, Mapping):
            entry["message"] = "access"
            entry.update({name: record.args.get(atom) for atom, name in self.ACCESS_FIELDS.items()})
        else:
            entry["message"] = record.getMessage()
            entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """The root handler of the process, in ``log_format`` (text or json), redacting secrets."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if log_format == "json":  # Hypercorn's lines come here too (python -m app serve)
            root.handlers[0].setFormatter(JSONFormatter())
        else:
            root.handlers[0].addFilter(_not_hypercorn)
    root.setLevel(level)
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    for name in ("hypercorn.access", "hypercorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
