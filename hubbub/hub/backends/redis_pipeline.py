"""Automatic pipelining: the commands awaited in one event-loop turn go to Redis together.

Under load many commands are in flight at once (every POST's rate limit and publish, every
newcomer's presence and connection count in a reconnect storm): sent as one pipeline on one
lean connection (``RedisLink``) they cost a few µs each (docs/performance.md). A lone
command waits one loop turn longer.

Commands keep their own results and errors: one failing (a ``ResponseError``) fails only its
caller; a lost connection or an overdue reply fails the whole batch, which is sent again
after a short, growing, jittered pause, up to ``RETRIES`` times, as redis-py's retry did: what
is batched must be safe to repeat, as the scripts are (their ``once`` keys). Replies are
RESP's own (``SET`` answers "OK"), decoded as UTF-8.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hubbub.hub.backends.redis_link import RedisLink

MAX_BATCH = 256  # commands per pipeline: a bigger turn goes out as several, in parallel
RETRIES = 3  # a batch that met a lost connection is sent this many times more at most
RETRY_BASE_S, RETRY_CAP_S = 0.05, 1.0  # the pause before retry n: up to min(cap, base * 2**n)

_Call = tuple[tuple[Any, ...], "AsyncScript | None", "asyncio.Future[Any]"]


class AutoPipeline:
    """``call`` and ``script`` resolve to what the client's own methods would have returned."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._queued: list[_Call] = []
        self._running: set[asyncio.Task[None]] = set()
        self.batches = 0  # round trips made (a test sees the batching by it)

    async def call(self, *command: Any) -> Any:
        """One command, e.g. ``call("HMGET", key, "epoch", "seq")``."""
        return await self._queue(command, None)

    async def script(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        """A registered script by its SHA; loaded first where Redis does not know it."""
        return await self._queue(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    def _queue(self, command: tuple[Any, ...], script: AsyncScript | None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._flush)  # after the callbacks of this turn: they join the batch
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((command, script, future))
        return future

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        for i in range(0, len(queued), MAX_BATCH):
            task = asyncio.create_task(self._send(queued[i:i + MAX_BATCH]))
            self._running.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._running.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            replies = await self._execute([command for command, _, _ in calls])
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:  # a restarted or flushed Redis: load each script once, then again
                for script in {id(calls[i][1]): calls[i][1] for i in missing}.values():
                    if script is not None:
                        (loaded,) = await self._execute([("SCRIPT", "LOAD", script.script)])
                        if isinstance(loaded, Exception):
                            raise loaded
                again = await self._execute([calls[i][0] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except Exception as exc:  # the batch failed whole: every caller hears why
            for _, _, future in calls:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the backend closing): so are its callers
            for _, _, future in calls:
                future.cancel()
            raise
        for (_, _, future), reply in zip(calls, replies, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        attempt = 0
        while True:
            self.batches += 1
            try:
                return await self._link.execute(commands)
            except (RedisConnectionError, RedisTimeoutError):
                if attempt == RETRIES:
                    raise
            await asyncio.sleep(random.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2 ** attempt)))
            attempt += 1

    async def close(self) -> None:
        """Waits for the batches under way (their callers are waiting on them too), then
        closes the link."""
        if self._queued:
            self._flush()
        if self._running:
            await asyncio.wait(self._running)
        self._link.close()
