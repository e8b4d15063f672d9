"""Automatic pipelining: the commands awaited in one event-loop turn go to Redis together.

redis-py sends each command on its own pooled connection and waits for its reply: about
0.25 ms of this process's CPU apiece, more than the hub spends on the message itself. Under
load many are in flight at once (every POST's rate limit and publish, every newcomer's
presence and connection count in a reconnect storm); sent as one pipeline they cost
0.04-0.08 ms each (docs/performance.md). A lone command waits one loop turn longer.

Commands keep their own results and errors: one failing (a ``ResponseError``) fails only its
caller; a lost connection fails the whole batch. redis-py's retry re-sends a batch whole, so
what is batched must be safe to repeat, as the scripts are (their ``once`` keys).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

MAX_BATCH = 256  # commands per pipeline: a bigger turn goes out as several, in parallel

_Call = tuple[tuple[Any, ...], "AsyncScript | None", "asyncio.Future[Any]"]


class AutoPipeline:
    """``call`` and ``script`` resolve to what the client's own methods would have returned."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
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
                        await self._client.script_load(script.script)
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
        self.batches += 1
        if len(commands) == 1:  # a pipeline's own set-up would cost more than it saves
            try:
                return [await self._client.execute_command(*commands[0])]
            except ResponseError as exc:
                return [exc]
        async with self._client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Waits for the batches under way (their callers are waiting on them too)."""
        if self._queued:
            self._flush()
        if self._running:
            await asyncio.wait(self._running)
