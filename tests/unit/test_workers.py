"""Start-up says loudly when several workers would run without REDIS_URL (a split hub).

Hypercorn's command line decides the worker count (it ignores WEB_CONCURRENCY, which
Heroku sets on every dyno); other servers are taken at their WEB_CONCURRENCY.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import pytest

from app.lifecycle import hypercorn_workers, server_command_line, warn_if_hub_split, worker_count
from tests.conftest import make_token
from tests.e2e.clients import recv_close, recv_json, ws_connect
from tests.e2e.processes import Hypercorn, hypercorn

VENV_HYPERCORN = "/app/.venv/bin/hypercorn"
APP = "app:create_app()"


@pytest.mark.parametrize(("argv", "workers"), [
    (["/usr/bin/python3", VENV_HYPERCORN, "--bind", "0.0.0.0:5000", APP], 1),
    (["/usr/bin/python3", VENV_HYPERCORN, "-w", "4", APP], 4),
    (["/usr/bin/python3", VENV_HYPERCORN, "-w4", APP], 4),
    (["/usr/bin/python3", VENV_HYPERCORN, "--workers", "3", "--worker-class", "uvloop", APP], 3),
    (["/usr/bin/python3", VENV_HYPERCORN, "--workers=2", APP], 2),
    (["hypercorn", "-w", "2", "--workers", "5", APP], 5),  # the last one wins, as in argparse
    (["hypercorn", "--workers", "0", APP], 1),  # serves in the one process
    (["python", "-m", "hypercorn", "-w", "2", APP], 2),
    (["hypercorn", "--worker-class", "uvloop", APP], 1),  # not --workers
    (["hypercorn", "-w", "many", APP], 1),  # hypercorn itself would refuse it
    (["hypercorn", "-w"], 1),
])
def test_hypercorn_workers_reads_every_form_of_the_option(argv: list[str], workers: int) -> None:
    assert hypercorn_workers(argv) == workers


@pytest.mark.parametrize("argv", [
    ["gunicorn", "-w", "4", "-k", "uvicorn.workers.UvicornWorker", "app:app"],
    ["/usr/bin/python3", "-m", "pytest", "-w", "4"],
    ["/srv/hypercorn-app/bin/python", "serve.py", "--workers", "2"],
    [],
])
def test_hypercorn_workers_is_none_for_other_command_lines(argv: list[str]) -> None:
    assert hypercorn_workers(argv) is None


def test_worker_count_trusts_hypercorns_command_line_over_web_concurrency() -> None:
    # Heroku's buildpack sets WEB_CONCURRENCY on every dyno; Hypercorn never reads it.
    assert worker_count({"WEB_CONCURRENCY": "4"}, ["hypercorn", APP]) == (1, "hypercorn --workers 1")
    assert worker_count({"WEB_CONCURRENCY": "1"}, ["hypercorn", "-w", "3", APP])[0] == 3


def test_worker_count_falls_back_to_web_concurrency_for_other_servers() -> None:
    gunicorn = ["gunicorn", "-k", "uvicorn.workers.UvicornWorker", "app:app"]
    assert worker_count({"WEB_CONCURRENCY": "3"}, gunicorn) == (3, "WEB_CONCURRENCY=3")
    assert worker_count({"WEB_CONCURRENCY": "02"}, None) == (2, "WEB_CONCURRENCY=2")  # old buildpacks
    for value in ("", "0", "two", "-2", " "):
        assert worker_count({"WEB_CONCURRENCY": value}, None)[0] == 1
    assert worker_count({}, None) == (1, "one process")


def test_warning_names_the_count_and_says_to_set_redis_url(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.lifecycle"):
        assert warn_if_hub_split(None, {}, ["hypercorn", "-w", "2", APP]) is True
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "2 workers" in record.getMessage()
    assert ("the hub would be split: each worker would only see its own connections; set REDIS_URL"
            in record.getMessage())


@pytest.mark.parametrize(("redis_url", "env", "argv"), [
    ("redis://127.0.0.1:6379/0", {"WEB_CONCURRENCY": "8"}, ["hypercorn", "-w", "8", APP]),
    (None, {}, ["hypercorn", APP]),
    (None, {"WEB_CONCURRENCY": "4"}, ["hypercorn", APP]),
    (None, {"WEB_CONCURRENCY": "1"}, ["gunicorn", "app:app"]),
])
def test_no_warning_with_redis_or_one_worker(
    caplog: pytest.LogCaptureFixture, redis_url: str | None, env: dict[str, str], argv: list[str],
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.lifecycle"):
        assert warn_if_hub_split(redis_url, env, argv) is False
    assert not caplog.records


def _report_command_line(queue: multiprocessing.Queue[list[str] | None]) -> None:
    queue.put(server_command_line())


def test_a_spawned_worker_reads_its_parents_command_line() -> None:
    """Hypercorn spawns its workers with multiprocessing: the worker sees the supervisor's argv."""
    assert server_command_line() == sys.argv  # not a spawned worker: this process's own
    ours = Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[list[str] | None] = context.Queue()
    child = context.Process(target=_report_command_line, args=(queue,))
    child.start()
    try:
        reported = queue.get(timeout=30)
    finally:
        child.join(timeout=30)
    assert reported == [arg.decode() for arg in ours]


async def test_hypercorn_with_two_workers_and_no_redis_warns_in_each_worker() -> None:
    async with hypercorn({}, workers=2) as server:
        pass
    warnings = [line for line in server.lines if "would be split" in line]
    assert len(warnings) == 2, server.output
    assert all("WARNING" in line and "2 workers (hypercorn --workers 2)" in line for line in warnings)


async def test_hypercorn_with_one_worker_does_not_warn_despite_web_concurrency() -> None:
    async with hypercorn({"WEB_CONCURRENCY": "4"}) as server:
        pass
    assert "would be split" not in server.output


async def test_hypercorn_with_workers_0_drains_and_exits_on_sigterm() -> None:
    """`--workers 0`: Hypercorn serves in its one process, which gets the SIGTERM itself."""
    server = Hypercorn({}, workers=0)
    await server.start()
    try:
        async with ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={make_token('a')}") as ws:
            assert (await recv_json(ws))["type"] == "welcome"
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGTERM)
            assert await recv_close(ws) == (1012, "server restarting")
        try:
            async with asyncio.timeout(10):
                await server.process.wait()
        except TimeoutError:
            raise AssertionError("drained, but still running 10 s after SIGTERM") from None
        assert server.process.returncode == 0, server.output
    finally:
        if server.process is not None and server.process.returncode is None:
            await server.kill()
        await server.stop()
