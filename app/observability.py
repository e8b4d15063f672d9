"""Health, Prometheus metrics and logging set-up (no secrets in any log line)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, fields

_SECRET_PARAMS = re.compile(r"(\b(?:token|ticket)=)[^&\s\"']*")


def redact(text: str) -> str:
    """Hides ``token`` and ``ticket`` query values in ``text``."""
    return _SECRET_PARAMS.sub(r"\1[redacted]", text)


class RedactingFilter(logging.Filter):
    """Redacts tokens and tickets from every record, whoever logs it (access log included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # mismatched arguments: logging would report it; do not raise here
            message = f"{record.msg} {record.args!r}"
        if "token=" in message or "ticket=" in message:
            record.msg, record.args = redact(message), None
        return True


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


@dataclass
class Metrics:
    """Counters of this process; gauges are read at scrape time."""

    published: int = 0
    connections_opened: int = 0
    slow_consumers: int = 0
    auth_failures: int = 0

    def render(self, gauges: dict[str, float], delivered: int) -> str:
        """Prometheus text format (version 0.0.4)."""
        counters = {f.name: getattr(self, f.name) for f in fields(self)}
        counters["delivered"] = delivered
        lines: list[str] = []
        for key, value in counters.items():
            name = f"hubbub_{key}_total"
            lines += [f"# TYPE {name} counter", f"{name} {value}"]
        for name, value in gauges.items():
            lines += [f"# TYPE hubbub_{name} gauge", f"hubbub_{name} {value}"]
        return "\n".join(lines) + "\n"
