"""The example's own storage: every chat message the hook let through, in SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any


class ChatStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()  # one writer at a time; sqlite3 runs in a thread

    async def open(self) -> None:
        await asyncio.to_thread(self._run, "CREATE TABLE IF NOT EXISTS messages "
                                "(channel TEXT, user TEXT, text TEXT, at TEXT DEFAULT CURRENT_TIMESTAMP)")

    async def add(self, channel: str, user: str, text: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self._run, "INSERT INTO messages (channel, user, text) VALUES (?, ?, ?)",
                                    channel, user, text)

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(
            self._run, "SELECT channel, user, text FROM messages ORDER BY rowid DESC LIMIT ?", limit)
        return [{"channel": c, "user": u, "text": t} for c, u, t in reversed(rows)]

    def _run(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self._path) as db:
            return db.execute(sql, args).fetchall()
