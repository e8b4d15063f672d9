"""The standalone server's settings, from the environment: a bad one stops start-up with one
line that names it (no traceback), and every process must agree on the JWT secret."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

from app.lifecycle import server_command_line, worker_count
from hubbub import Settings


def stop(problem: str) -> NoReturn:
    """One line on stderr and exit status 2: what a person or a platform can act on."""
    print(f"hubbub: configuration error: {problem}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def settings_from_env(env: Mapping[str, str] | None = None,
                      command_line: Sequence[str] | None = None) -> Settings:
    """Settings.from_env(), or ``stop()`` naming the variable, the value and what is allowed."""
    env = os.environ if env is None else env
    try:
        settings = Settings.from_env(env)
    except ValueError as error:
        stop(str(error))
    if settings.ephemeral_secret:
        shared = _shared_by(settings, env, server_command_line() if command_line is None else command_line)
        if shared:
            stop(f"JWT_SECRET is not set and {shared}: each process would sign with a secret of its "
                 "own and refuse the others' tokens. Set the same JWT_SECRET everywhere "
                 "(python -c 'import secrets; print(secrets.token_urlsafe(48))')")
    return settings


def _shared_by(settings: Settings, env: Mapping[str, str], command_line: Sequence[str] | None) -> str:
    """Why more than one process serves these tokens ("" if only one does)."""
    if settings.redis_url:
        return "REDIS_URL is set (many processes, one hub)"
    workers, source = worker_count(env, command_line)
    return f"{workers} workers serve ({source})" if workers > 1 else ""


def describe(settings: Settings) -> list[str]:
    """The effective configuration, one ``NAME=value`` per line, secrets masked."""
    s = settings
    if s.ephemeral_secret:
        secret = "(not set: an ephemeral secret, demo login on)"
    else:
        secret = "(set)" if s.jwt_secret else "(not set)"
    lines = {
        "PORT": s.port,
        "JWT_SECRET": secret,
        "JWT_PUBLIC_KEY": "(set)" if s.jwt_public_key else "(not set)",
        "JWT_ALGORITHMS": " ".join(s.jwt_algorithms),
        "JWT_AUDIENCE": s.jwt_audience or "",
        "JWT_ISSUER": s.jwt_issuer or "",
        "API_KEYS": " ".join(f"{name}:***" for name, _ in s.api_keys),
        "REDIS_URL": _without_password(s.redis_url) if s.redis_url else "(not set: in memory, one process)",
        "REDIS_PREFIX": s.redis_prefix,
        "ALLOWED_ORIGINS": " ".join(s.allowed_origins) or "(same origin)",
        "HISTORY_SIZE": s.history_size,
        "HISTORY_TTL": s.history_ttl_s,
        "HEARTBEAT_INTERVAL": s.heartbeat_interval_s,
        "IDLE_TIMEOUT": s.idle_timeout_s,
        "RATE_LIMIT_PER_SECOND": s.rate_limit_per_second,
        "RATE_LIMIT_BURST": s.rate_limit_burst,
        "PUBLISH_RATE_LIMIT_PER_SECOND": s.publish_rate_limit_per_second,
        "PUBLISH_RATE_LIMIT_BURST": s.publish_rate_limit_burst,
        "API_KEY_RATE_LIMIT_PER_SECOND": s.api_key_rate_limit_per_second,
        "API_KEY_RATE_LIMIT_BURST": s.api_key_rate_limit_burst,
        "IDEMPOTENCY_TTL": s.idempotency_ttl_s,
        "MAX_MESSAGE_BYTES": s.max_message_bytes,
        "MAX_CONNECTIONS_PER_USER": s.max_connections_per_user,
        "MAX_CONNECTIONS": s.max_connections or "(90% of the file-descriptor limit)",
        "MAX_CHANNELS_PER_CONNECTION": s.max_channels_per_connection,
        "OUTBOX_SIZE": s.outbox_size,
        "PRESENCE_JOIN_LIMIT": s.presence_join_limit,
        "PRESENCE_INTERVAL": s.presence_interval_s,
        "QUIET_ROOMS": " ".join(s.quiet_rooms) or "(none)",
        "DEMO_LOGIN": "on" if s.demo_login_enabled else "off",
        "WEBSOCKET_COMPRESSION": "on" if s.websocket_compression else "off",
        "LOG_LEVEL": s.log_level,
        "LOG_FORMAT": s.log_format,
        "METRICS_TOKEN": "(set)" if s.metrics_token else "(not set: /metrics is open)",
        "ADMIN_TOKEN": "(set: /admin is on)" if s.admin_token else "(not set: /admin is off)",
    }
    return [f"{name}={value}" for name, value in lines.items()]


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
