"""The wire protocol's tables, read from static/protocol.json: the browser client imports
the same file, so the two sides cannot drift (tests/unit/test_protocol.py checks the uses).

- ``CLOSE_CODES``: WebSocket close code by name (``restarting`` → 1012).
- ``ERROR_STATUS``: HTTP status by error code (``{"error": "rate_limited"}`` → 429).
- ``SERVER_FRAMES``: the frame types the hub sends of its own (a publisher may not use them).
- ``CLIENT_FRAMES``: the frame types a WebSocket client may send.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _static_dir() -> Path:
    """The browser client and demo files: inside the package when installed from a wheel,
    at the top of the repository in a checkout (an editable install)."""
    package = Path(__file__).resolve().parent
    packaged = package / "static"
    return packaged if packaged.is_dir() else package.parent / "static"


STATIC_DIR = _static_dir()
_TABLES: dict[str, Any] = json.loads((STATIC_DIR / "protocol.json").read_text(encoding="utf-8"))

CLOSE_CODES: dict[str, int] = {entry["name"]: int(code) for code, entry in _TABLES["close_codes"].items()}
ERROR_STATUS: dict[str, int] = dict(_TABLES["errors"])
SERVER_FRAMES: frozenset[str] = frozenset(_TABLES["frames"]["server"])
CLIENT_FRAMES: frozenset[str] = frozenset(_TABLES["frames"]["client"])
