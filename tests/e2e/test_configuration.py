"""A bad setting stops the server with one line that names it and a non-zero exit, never a
traceback; every process must agree on the JWT secret; ``python -m app config`` shows the
effective configuration with every secret masked."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parents[2]
HYPERCORN = str(Path(sys.executable).with_name("hypercorn"))
# Inherited variables that would change what the server under test does.
CLEAN = {k: v for k, v in os.environ.items()
         if not k.startswith(("JWT_", "REDIS_", "API_KEY", "HISTORY_", "RATE_", "MAX_", "PUBLISH_", "DEMO_"))
         and k not in ("WEB_CONCURRENCY", "PORT", "ALLOWED_ORIGINS", "LOG_LEVEL", "LOG_FORMAT",
                       "METRICS_TOKEN", "ADMIN_TOKEN", "OUTBOX_SIZE", "IDLE_TIMEOUT", "HEARTBEAT_INTERVAL",
                       "IDEMPOTENCY_TTL", "WEBSOCKET_COMPRESSION")}

BAD_VALUES = [
    ("PORT", "http"), ("HISTORY_SIZE", "0"), ("HISTORY_TTL", "soon"), ("HEARTBEAT_INTERVAL", "abc"),
    ("IDLE_TIMEOUT", "-1"), ("RATE_LIMIT_PER_SECOND", "0"), ("RATE_LIMIT_BURST", "many"),
    ("PUBLISH_RATE_LIMIT_PER_SECOND", "nan"), ("PUBLISH_RATE_LIMIT_BURST", "0"),
    ("API_KEY_RATE_LIMIT_PER_SECOND", "fast"), ("API_KEY_RATE_LIMIT_BURST", "-2"),
    ("IDEMPOTENCY_TTL", "0"), ("MAX_MESSAGE_BYTES", "1"), ("MAX_CONNECTIONS_PER_USER", "0"),
    ("MAX_CONNECTIONS", "lots"), ("OUTBOX_SIZE", "0"), ("DEMO_LOGIN", "maybe"),
    ("WEBSOCKET_COMPRESSION", "sometimes"), ("REDIS_URL", "localhost:6379"),
    ("ALLOWED_ORIGINS", "example.com"), ("LOG_LEVEL", "LOUD"), ("LOG_FORMAT", "xml"),
    ("JWT_ALGORITHMS", "none"), ("JWT_SECRET", "short"), ("JWT_PUBLIC_KEY", "not a key"),
    ("API_KEYS", "orders:short"),
]


async def run(*args: str, env: dict[str, str], timeout: float = 30) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(*args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(timeout):
        out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[name for name, _ in BAD_VALUES])
async def test_bad_value_one_line_naming_it_exit_nonzero(name: str, value: str) -> None:
    code, out, err = await run(sys.executable, "-m", "app", "config",
                               env={**CLEAN, "JWT_SECRET": SECRET, name: value})
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(("name", "value", "line"), [
    ("HEARTBEAT_INTERVAL", "abc", "HEARTBEAT_INTERVAL must be a number, got 'abc'"),
    ("WEB_CONCURRENCY", "two", "WEB_CONCURRENCY must be a whole number of at least 1, got 'two'"),
])
async def test_serve_with_a_bad_value_exits_2_with_one_line(name: str, value: str, line: str) -> None:
    code, out, err = await run(sys.executable, "-m", "app", "serve", "--port", "0",
                               env={**CLEAN, "JWT_SECRET": SECRET, name: value})
    assert code == 2
    assert err.strip() == f"hubbub: configuration error: {line}"
    assert out == ""


async def test_plain_hypercorn_with_a_bad_value_one_line_no_traceback() -> None:
    # It used to print a 22-line traceback. (Its exit status is Hypercorn's supervisor's,
    # which reports 0 whatever its worker exits with: `python -m app serve` exits 2.)
    code, out, err = await run(HYPERCORN, "--bind", "127.0.0.1:0", "app:create_app()",
                               env={**CLEAN, "JWT_SECRET": SECRET, "HEARTBEAT_INTERVAL": "abc"})
    output = out + err
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if line.strip()] == [
        "hubbub: configuration error: HEARTBEAT_INTERVAL must be a number, got 'abc'"]


@pytest.mark.parametrize(("env", "reason"), [
    ({"REDIS_URL": "redis://127.0.0.1:6379/0"}, "REDIS_URL is set"),
    ({"WEB_CONCURRENCY": "2"}, "2 workers"),
])
async def test_many_processes_without_jwt_secret_refused(env: dict[str, str], reason: str) -> None:
    code, _, err = await run(sys.executable, "-m", "app", "config", env={**CLEAN, **env})
    assert code == 2
    assert "JWT_SECRET is not set" in err and reason in err and len(err.strip().splitlines()) == 1


async def test_config_prints_the_effective_settings_secrets_masked() -> None:
    key = "orders-secret-0123456789abcdef0123"
    code, out, _ = await run(sys.executable, "-m", "app", "config", env={
        **CLEAN, "JWT_SECRET": SECRET, "API_KEYS": f"orders:{key}",
        "REDIS_URL": "redis://:hunter2-redis@127.0.0.1:6379/0", "HISTORY_SIZE": "50"})
    assert code == 0
    settings = dict(line.split("=", 1) for line in out.splitlines())
    assert settings["HISTORY_SIZE"] == "50" and settings["JWT_SECRET"] == "(set)"
    assert settings["API_KEYS"] == "orders:***"
    assert settings["REDIS_URL"] == "redis://:***@127.0.0.1:6379/0"
    for secret in (SECRET, key, "hunter2-redis"):
        assert secret not in out
