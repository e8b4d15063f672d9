"""Prometheus metrics, and the log filters that keep secrets and floods out of any log line."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

# Parameter names whose values are credentials, as the app reads a name: percent-decoded,
# then case-folded here to be safe (?%74oken= and ?TOKEN= are hidden too).
_SECRET_PARAMS = frozenset({"token", "ticket", "api_key"})
# A parameter name is taken whole, so access_token= is not token=; a name is spelled with
# letters, digits, %XX escapes and unreserved marks, and must be followed by "=".
_PARAM_NAME = re.compile(r"(?<![\w%.~+\-])[\w%.~+\-]+(?==)")
_VALUE_END = re.compile(r"[&\s\"']")
_EXCEPTION_TEXT = logging.Formatter()


def redact(text: str) -> str:
    """Hides the value of every ``token``, ``ticket`` and ``api_key`` parameter in ``text``,
    wherever a ``name=value`` pair sits (URL, bare query string, Referer, free text)."""
    parts: list[str] = []
    done = 0
    for name in _PARAM_NAME.finditer(text):
        if name.start() < done or unquote(name.group()).casefold() not in _SECRET_PARAMS:
            continue
        value = name.end() + 1
        end = _VALUE_END.search(text, value)
        parts += (text[done:value], "[redacted]")
        done = end.start() if end else len(text)
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


class RedactingFilter(logging.Filter):
    """Redacts tokens and tickets from every record, whoever logs it (access log included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # mismatched arguments: logging would report it; do not raise here
            message = f"{record.msg} {record.args!r}"
        if "=" in message:  # cheap: most lines have no name=value pair at all
            redacted = redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:  # an exception's message may quote a URL
            text = _EXCEPTION_TEXT.formatException(record.exc_info)
            if "=" in text and (redacted := redact(text)) != text:
                record.exc_text = redacted
        return True


class OncePerInterval(logging.Filter):
    """Lets a record through once per ``interval_s`` (without its traceback), counting the rest.

    asyncio logs every failed accept() with a traceback, and retries at once: with no file
    descriptor left that is thousands of lines a second, which hide everything else."""

    def __init__(self, starts_with: str, interval_s: float = 10.0) -> None:
        super().__init__()
        self._starts_with = starts_with
        self._interval_s = interval_s
        self._last = float("-inf")
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self._starts_with):
            return True
        if record.created - self._last < self._interval_s:
            self._dropped += 1
            return False
        self._last = record.created
        more = f" ({self._dropped} more since the last report)" if self._dropped else ""
        record.msg, record.args, self._dropped = f"{record.getMessage()}{more}", None, 0
        record.exc_info = record.exc_text = None
        return True
