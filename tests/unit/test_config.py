"""Settings from the environment: defaults, the ephemeral secret, and a bad value naming its variable."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hubbub.config import Settings

SECRET = "config-test-secret-that-is-long-enough-for-hs256"


@pytest.fixture(scope="module")
def public_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.mark.parametrize(("name", "value"), [
    ("PORT", "abc"),
    ("PORT", "-1"),
    ("PORT", "8000.5"),
    ("PORT", "70000"),
    ("HISTORY_SIZE", "0"),
    ("HISTORY_SIZE", "ten"),
    ("HISTORY_TTL", "0.5"),
    ("HISTORY_TTL", "nan"),
    ("HEARTBEAT_INTERVAL", "nan"),
    ("HEARTBEAT_INTERVAL", "0"),
    ("HEARTBEAT_INTERVAL", "-5"),
    ("HEARTBEAT_INTERVAL", "soon"),
    ("IDLE_TIMEOUT", "nan"),
    ("IDLE_TIMEOUT", "0"),
    ("RATE_LIMIT_PER_SECOND", "0"),
    ("RATE_LIMIT_PER_SECOND", "NaN"),
    ("RATE_LIMIT_BURST", "0"),
    ("RATE_LIMIT_BURST", "1.5"),
    ("MAX_MESSAGE_BYTES", "10"),
    ("MAX_MESSAGE_BYTES", "64k"),
    ("MAX_CONNECTIONS_PER_USER", "0"),
    ("OUTBOX_SIZE", "0"),
    ("OUTBOX_SIZE", "many"),
    ("DEMO_LOGIN", "maybe"),
    ("DEMO_LOGIN", "2"),
    ("REDIS_URL", "http://x"),
    ("REDIS_URL", "localhost:6379"),
    ("ALLOWED_ORIGINS", "foo"),
    ("ALLOWED_ORIGINS", "https://ok.example, example.com"),
    ("LOG_LEVEL", "LOUD"),
    ("JWT_ALGORITHMS", "XYZ"),
    ("JWT_ALGORITHMS", "none"),
    ("JWT_ALGORITHMS", "HS256,XYZ"),
    ("JWT_SECRET", "short"),  # RFC 7518 §3.2: an HS256 key MUST be at least 256 bits
])
def test_settings_bad_value_raises_value_error_naming_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({"JWT_SECRET": SECRET, name: value})


def test_settings_public_key_with_symmetric_algorithms_only_raises(public_pem: str) -> None:
    with pytest.raises(ValueError, match="JWT_ALGORITHMS"):
        Settings.from_env({"JWT_PUBLIC_KEY": public_pem, "JWT_ALGORITHMS": "HS256"})


def test_settings_public_key_mixed_with_hmac_algorithm_raises(public_pem: str) -> None:
    # With a public key as the verifying key an HS* token can never verify; PyJWT raises
    # InvalidKeyError (not InvalidTokenError) for it, so the mix must be refused at start-up.
    with pytest.raises(ValueError, match="JWT_ALGORITHMS"):
        Settings.from_env({"JWT_PUBLIC_KEY": public_pem, "JWT_ALGORITHMS": "RS256,HS256"})


def test_settings_public_key_not_pem_raises() -> None:
    with pytest.raises(ValueError, match="JWT_PUBLIC_KEY"):
        Settings.from_env({"JWT_PUBLIC_KEY": "not-a-key"})


def test_settings_empty_env_defaults() -> None:
    settings = Settings.from_env({"JWT_SECRET": SECRET})
    assert settings == Settings(jwt_secret=SECRET)
    assert settings.port == 8000
    assert settings.jwt_algorithms == ("HS256",)
    assert settings.jwt_audience is None and settings.jwt_issuer is None
    assert settings.redis_url is None and settings.backend_name == "memory"
    assert settings.redis_prefix == "hubbub:"
    assert settings.allowed_origins == ()
    assert settings.history_size == 1000
    assert settings.history_ttl_s == 3600.0
    assert settings.heartbeat_interval_s == 15.0
    assert settings.idle_timeout_s == 60.0
    assert settings.rate_limit_per_second == 1.0
    assert settings.rate_limit_burst == 10
    assert settings.max_message_bytes == 64 * 1024
    assert settings.max_connections_per_user == 20
    assert settings.outbox_size == 1000
    assert settings.demo_login is None and settings.demo_login_enabled is False
    assert settings.log_level == "INFO"
    assert settings.ephemeral_secret is False


def test_settings_empty_strings_mean_defaults() -> None:
    names = ("PORT", "HISTORY_SIZE", "HEARTBEAT_INTERVAL", "DEMO_LOGIN", "REDIS_URL", "ALLOWED_ORIGINS",
             "OUTBOX_SIZE", "JWT_AUDIENCE", "JWT_ISSUER")
    settings = Settings.from_env({"JWT_SECRET": SECRET, **dict.fromkeys(names, "")})
    assert settings == Settings(jwt_secret=SECRET)


def test_settings_valid_values_parsed() -> None:
    settings = Settings.from_env({
        "JWT_SECRET": SECRET, "PORT": "5000", "HISTORY_SIZE": "50", "HEARTBEAT_INTERVAL": "2.5",
        "DEMO_LOGIN": "Yes", "REDIS_URL": "rediss://h:6380/0", "ALLOWED_ORIGINS": "https://a.example, *",
        "LOG_LEVEL": "debug", "JWT_ALGORITHMS": "HS384 HS256", "JWT_AUDIENCE": "hubbub",
        "JWT_ISSUER": "https://idp.example", "OUTBOX_SIZE": "5",
    })
    assert settings.port == 5000
    assert settings.history_size == 50
    assert settings.heartbeat_interval_s == 2.5
    assert settings.demo_login is True and settings.demo_login_enabled is True
    assert settings.redis_url == "rediss://h:6380/0" and settings.backend_name == "redis"
    assert settings.allowed_origins == ("https://a.example", "*")
    assert settings.log_level == "DEBUG"
    assert settings.jwt_algorithms == ("HS384", "HS256")
    assert settings.jwt_audience == "hubbub"
    assert settings.jwt_issuer == "https://idp.example"
    assert settings.outbox_size == 5


def test_settings_no_jwt_secret_ephemeral_secret() -> None:
    first = Settings.from_env({})
    second = Settings.from_env({})
    assert first.ephemeral_secret is True
    assert len(first.jwt_secret) >= 32
    assert first.jwt_secret != second.jwt_secret  # random per process start
    assert first.demo_login_enabled is True


def test_settings_jwt_secret_set_not_ephemeral() -> None:
    settings = Settings.from_env({"JWT_SECRET": SECRET})
    assert settings.ephemeral_secret is False
    assert settings.jwt_secret == SECRET


def test_settings_public_key_not_ephemeral_asymmetric_defaults(public_pem: str) -> None:
    escaped = public_pem.replace("\n", "\\n")  # how a one-line environment variable carries it
    settings = Settings.from_env({"JWT_PUBLIC_KEY": escaped})
    assert settings.jwt_public_key == public_pem
    assert settings.ephemeral_secret is False
    assert settings.jwt_secret == ""
    assert settings.jwt_algorithms == ("RS256", "ES256")
    assert settings.demo_login_enabled is False


def test_settings_demo_login_0_off_even_with_the_ephemeral_secret() -> None:
    settings = Settings.from_env({"DEMO_LOGIN": "0"})
    assert settings.ephemeral_secret is True
    assert settings.demo_login_enabled is False


def test_settings_made_in_code_checked_like_the_environment() -> None:
    # An app embedding hubbub builds Settings itself: the same rules, the same messages.
    assert Settings(jwt_secret=SECRET).jwt_algorithms == ("HS256",)
    made = Settings()
    assert made.ephemeral_secret is True and len(made.jwt_secret) >= 32
    with pytest.raises(ValueError, match="JWT_SECRET"):
        Settings(jwt_secret="short")
    with pytest.raises(ValueError, match="REDIS_URL"):
        Settings(jwt_secret=SECRET, redis_url="localhost:6379")
    with pytest.raises(ValueError, match="OUTBOX_SIZE"):
        Settings(jwt_secret=SECRET, outbox_size=0)
    with pytest.raises(ValueError, match="HISTORY_TTL"):
        Settings(jwt_secret=SECRET, history_ttl_s=float("nan"))
