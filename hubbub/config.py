"""Settings, checked once: made in code or read from the environment; a bad value names its variable."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _port(env: Mapping[str, str]) -> int:
    port = _int(env, "PORT", 8000, minimum=0)
    if port > 65535:
        raise ValueError(f"PORT must be at most 65535, got {port}")
    return port


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:  # also rejects NaN
        raise ValueError(f"{name} must be at least {minimum}, got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    return tuple(item.strip() for item in raw.replace(",", " ").split() if item.strip())


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_MIN_SECRET_BYTES = 32


def _check_public_key(pem: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        load_pem_public_key(pem.encode())
    except ValueError:
        raise ValueError("JWT_PUBLIC_KEY must be a PEM public key (BEGIN PUBLIC KEY)") from None
_ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, checked when made: ``Settings(jwt_secret=...)`` in code, or
    ``Settings.from_env()`` from the environment variables of docs/api.md.

    No secret and no public key means development: an ephemeral secret is made (tokens die
    with the process) and demo login is on.
    """

    port: int = 8000
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_algorithms: tuple[str, ...] = ()  # default: HS256, or RS256 and ES256 with a public key
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    ephemeral_secret: bool = False  # set when no secret was given (development)
    redis_url: str | None = None
    redis_prefix: str = "hubbub:"
    allowed_origins: tuple[str, ...] = ()
    history_size: int = 1000
    history_ttl_s: float = 3600.0
    heartbeat_interval_s: float = 15.0
    idle_timeout_s: float = 60.0
    rate_limit_per_second: float = 1.0
    rate_limit_burst: int = 10
    max_message_bytes: int = 64 * 1024
    max_connections_per_user: int = 20
    max_connections: int = 0  # live connections per process; 0: derived from the fd limit
    max_channels_per_connection: int = 128  # /ws and /sse: rooms (+ notifications) on one connection
    publish_rate_limit_per_second: float = 50.0
    publish_rate_limit_burst: int = 200
    outbox_size: int = 1000
    presence_join_limit: int = 100  # join/leave frames while a room has at most this many users
    presence_interval_s: float = 5.0  # beyond it: a presence frame this often, with the changes
    quiet_rooms: tuple[str, ...] = ()  # glob patterns of rooms that announce neither
    demo_login: bool | None = None  # None: on only with the ephemeral secret (development)
    api_keys: tuple[tuple[str, str], ...] = ()  # (name, secret): backends publishing over HTTP
    api_key_rate_limit_per_second: float = 1000.0
    api_key_rate_limit_burst: int = 2000
    idempotency_ttl_s: float = 86400.0
    metrics_token: str = ""  # when set, /metrics needs it as a bearer token
    admin_token: str = ""  # when set, /admin (the operator page) is on, behind it
    websocket_compression: bool = False
    log_level: str = "INFO"
    log_format: str = "text"  # or json: one object per line (the standalone server)

    def __post_init__(self) -> None:
        public_key = self.jwt_public_key
        algorithms = self.jwt_algorithms or (("RS256", "ES256") if public_key else ("HS256",))
        if public_key and not all(a in _ASYMMETRIC for a in algorithms):
            raise ValueError("JWT_ALGORITHMS must name only asymmetric algorithms with JWT_PUBLIC_KEY")
        if public_key:
            _check_public_key(public_key)
        unknown = [a for a in algorithms if a not in _ASYMMETRIC + ("HS256", "HS384", "HS512")]
        if unknown:
            raise ValueError(f"JWT_ALGORITHMS has unknown algorithm(s): {', '.join(unknown)}")
        secret = self.jwt_secret
        if secret and not self.ephemeral_secret and len(secret.encode()) < _MIN_SECRET_BYTES:
            # RFC 7518 §3.2: an HS256 key must have at least 256 bits.
            raise ValueError(f"JWT_SECRET must be at least {_MIN_SECRET_BYTES} bytes long")
        if not secret and not public_key:
            object.__setattr__(self, "jwt_secret", secrets.token_urlsafe(32))
            object.__setattr__(self, "ephemeral_secret", True)
        object.__setattr__(self, "jwt_algorithms", tuple(algorithms))
        redis_url = self.redis_url
        if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"REDIS_URL must start with redis://, rediss:// or unix://, got {redis_url!r}")
        for origin in self.allowed_origins:
            # "null": the opaque origin (sandboxed frames, file: pages), only when listed as such.
            if origin not in ("*", "null") and not origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"ALLOWED_ORIGINS entries must be '*', 'null' or http(s)://host, got {origin!r}"
                )
        _check_api_keys(self.api_keys)
        if self.log_format not in ("text", "json"):
            raise ValueError(f"LOG_FORMAT must be text or json, got {self.log_format!r}")
        if self.log_level not in _LOG_LEVELS:
            raise ValueError(f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}")
        for name, minimum in _MINIMUMS.items():
            value = getattr(self, name)
            if not value >= minimum:  # also refuses NaN
                raise ValueError(f"{name.upper().removesuffix('_S')} must be at least {minimum}, got {value}")

    @property
    def demo_login_enabled(self) -> bool:
        return self.ephemeral_secret if self.demo_login is None else self.demo_login

    @property
    def backend_name(self) -> str:
        return "redis" if self.redis_url else "memory"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """From the environment (docs/api.md, Configuration); a bad value names its variable."""
        env = os.environ if env is None else env
        return cls(
            port=_port(env),
            jwt_secret=env.get("JWT_SECRET", ""),
            jwt_public_key=env.get("JWT_PUBLIC_KEY", "").replace("\\n", "\n"),
            jwt_algorithms=_list(env, "JWT_ALGORITHMS"),
            jwt_audience=env.get("JWT_AUDIENCE") or None,
            jwt_issuer=env.get("JWT_ISSUER") or None,
            redis_url=env.get("REDIS_URL") or None,
            redis_prefix=env.get("REDIS_PREFIX", "hubbub:"),
            allowed_origins=_list(env, "ALLOWED_ORIGINS"),
            history_size=_int(env, "HISTORY_SIZE", 1000, minimum=1),
            history_ttl_s=_float(env, "HISTORY_TTL", 3600.0, minimum=1.0),
            heartbeat_interval_s=_float(env, "HEARTBEAT_INTERVAL", 15.0, minimum=0.05),
            idle_timeout_s=_float(env, "IDLE_TIMEOUT", 60.0, minimum=0.1),
            rate_limit_per_second=_float(env, "RATE_LIMIT_PER_SECOND", 1.0, minimum=0.001),
            rate_limit_burst=_int(env, "RATE_LIMIT_BURST", 10, minimum=1),
            max_message_bytes=_int(env, "MAX_MESSAGE_BYTES", 64 * 1024, minimum=64),
            max_connections_per_user=_int(env, "MAX_CONNECTIONS_PER_USER", 20, minimum=1),
            max_connections=_int(env, "MAX_CONNECTIONS", 0, minimum=0),
            max_channels_per_connection=_int(env, "MAX_CHANNELS_PER_CONNECTION", 128, minimum=1),
            publish_rate_limit_per_second=_float(env, "PUBLISH_RATE_LIMIT_PER_SECOND", 50.0, minimum=0.001),
            publish_rate_limit_burst=_int(env, "PUBLISH_RATE_LIMIT_BURST", 200, minimum=1),
            outbox_size=_int(env, "OUTBOX_SIZE", 1000, minimum=1),
            presence_join_limit=_int(env, "PRESENCE_JOIN_LIMIT", 100, minimum=0),
            presence_interval_s=_float(env, "PRESENCE_INTERVAL", 5.0, minimum=0.05),
            quiet_rooms=_list(env, "QUIET_ROOMS"),
            demo_login=_bool(env, "DEMO_LOGIN") if env.get("DEMO_LOGIN", "").strip() else None,
            api_keys=_api_keys(env),
            api_key_rate_limit_per_second=_float(env, "API_KEY_RATE_LIMIT_PER_SECOND", 1000.0, minimum=0.001),
            api_key_rate_limit_burst=_int(env, "API_KEY_RATE_LIMIT_BURST", 2000, minimum=1),
            idempotency_ttl_s=_float(env, "IDEMPOTENCY_TTL", 86400.0, minimum=1.0),
            metrics_token=env.get("METRICS_TOKEN", ""),
            admin_token=env.get("ADMIN_TOKEN", ""),
            websocket_compression=_bool(env, "WEBSOCKET_COMPRESSION"),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            log_format=env.get("LOG_FORMAT", "text").lower(),
        )


# The same floors as from_env's, for Settings made in code.
_MINIMUMS = {"history_size": 1, "history_ttl_s": 1.0, "heartbeat_interval_s": 0.05, "idle_timeout_s": 0.1,
             "rate_limit_per_second": 0.001, "rate_limit_burst": 1, "max_message_bytes": 64,
             "max_connections_per_user": 1, "max_connections": 0, "max_channels_per_connection": 1,
             "publish_rate_limit_per_second": 0.001,
             "publish_rate_limit_burst": 1, "outbox_size": 1, "presence_join_limit": 0,
             "presence_interval_s": 0.05, "api_key_rate_limit_per_second": 0.001,
             "api_key_rate_limit_burst": 1, "idempotency_ttl_s": 1.0}

_KEY_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MIN_API_KEY_CHARS = 24


def _api_keys(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``API_KEYS="name1:secret1,name2:secret2"`` (commas or spaces between keys)."""
    keys = []
    for item in _list(env, "API_KEYS"):
        name, colon, secret = item.partition(":")
        if not colon:
            raise ValueError("API_KEYS entries must be name:secret, got one without a ':'")
        keys.append((name, secret))
    return tuple(keys)


def _check_api_keys(keys: tuple[tuple[str, str], ...]) -> None:
    # The message never quotes a secret: it would land in a log.
    names = [name for name, _ in keys]
    for name, secret in keys:
        if not _KEY_NAME.fullmatch(name):
            raise ValueError(f"API_KEYS names must be 1-64 of A-Z a-z 0-9 _ . -, got {name!r}")
        if len(secret) < MIN_API_KEY_CHARS:
            raise ValueError(f"API_KEYS: the secret of {name!r} must be at least "
                             f"{MIN_API_KEY_CHARS} characters")
    if len(set(names)) != len(names) or len({secret for _, secret in keys}) != len(keys):
        raise ValueError("API_KEYS: every key needs a name and a secret of its own")
