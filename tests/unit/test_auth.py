"""Token verification (HS256 and RS256), the Principal's room globs, and one-time tickets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hubbub import auth as auth_module
from hubbub.auth import (
    Authenticator,
    Principal,
    authenticate,
    bearer_token,
    issue_ticket,
    redeem_ticket,
)
from hubbub.config import Settings
from hubbub.errors import Forbidden, Unauthorized
from hubbub.hub.backends.memory import MemoryBackend

SECRET = "auth-test-secret-that-is-long-enough-for-hs256"
OTHER_SECRET = "another-secret-that-is-also-long-enough-for-hs256"
TIMEOUT_S = 2.0


def claims(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 600}
    value.update(overrides)
    return {k: v for k, v in value.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_hs256(payload: dict[str, Any], key: bytes) -> str:
    """An HS256 token MACed with ``key``, made by hand: PyJWT refuses to sign with a PEM."""
    signing_input = f"{b64url(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}." \
                    f"{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return key, pem


@pytest.fixture
def hs_auth() -> Authenticator:
    return Authenticator(Settings.from_env({"JWT_SECRET": SECRET}))


# -- HS256 ---------------------------------------------------------------------


def test_authenticator_verify_good_hs256_token_principal(hs_auth: Authenticator) -> None:
    exp = int(time.time()) + 600
    principal = hs_auth.verify(hs256(claims(exp=exp, scope="notify admin", rooms=["team-*"])))
    assert principal == Principal("alice", frozenset({"notify", "admin"}), ("team-*",), float(exp))
    assert 0 < (principal.seconds_left() or 0) <= 600


def test_authenticator_verify_expired_token_unauthorized(hs_auth: Authenticator) -> None:
    with pytest.raises(Unauthorized, match="expired") as caught:
        hs_auth.verify(hs256(claims(exp=int(time.time()) - 60)))
    assert caught.value.status == 401


def test_authenticator_verify_within_leeway_accepted(hs_auth: Authenticator) -> None:
    assert hs_auth.verify(hs256(claims(exp=int(time.time()) - 1))).user == "alice"


def test_authenticator_verify_checks_a_token_once_and_never_past_its_exp(
        hs_auth: Authenticator, monkeypatch: pytest.MonkeyPatch) -> None:
    token = hs256(claims(exp=int(time.time()) + 60))
    first = hs_auth.verify(token)
    calls: list[str] = []
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append("decode") or {})
    assert hs_auth.verify(token) is first and calls == []  # the same text: not decoded again
    later = time.time() + 60 + 6  # past exp and the 5 s leeway PyJWT allows
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Unauthorized):
        hs_auth.verify(token)  # decoded again (the stub's claims lack sub): never served stale
    assert calls == ["decode"]


def test_authenticator_verify_remembers_only_good_tokens_and_a_bounded_number(
        hs_auth: Authenticator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_module, "VERIFIED_CACHE_SIZE", 3)
    bad = hs256(claims(), secret=OTHER_SECRET)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            hs_auth.verify(bad)
    tokens = [hs256(claims(sub=f"u{i}")) for i in range(5)]
    assert [hs_auth.verify(t).user for t in tokens] == [f"u{i}" for i in range(5)]
    assert list(hs_auth._verified) == tokens[2:]


def test_authenticator_verify_bad_signature_unauthorized(hs_auth: Authenticator) -> None:
    with pytest.raises(Unauthorized):
        hs_auth.verify(hs256(claims(), secret=OTHER_SECRET))


def test_authenticator_verify_tampered_payload_unauthorized(hs_auth: Authenticator) -> None:
    header, _, signature = hs256(claims()).split(".")
    payload = b64url(json.dumps(claims(sub="mallory")).encode())
    with pytest.raises(Unauthorized):
        hs_auth.verify(f"{header}.{payload}.{signature}")


def test_authenticator_verify_alg_none_unauthorized(hs_auth: Authenticator) -> None:
    unsigned = jwt.encode(claims(), "", algorithm="none")
    with pytest.raises(Unauthorized):
        hs_auth.verify(unsigned)
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    with pytest.raises(Unauthorized):
        hs_auth.verify(f"{header}.{b64url(json.dumps(claims()).encode())}.")


@pytest.mark.parametrize("missing", ["sub", "exp"])
def test_authenticator_verify_missing_claim_unauthorized(hs_auth: Authenticator, missing: str) -> None:
    with pytest.raises(Unauthorized, match=missing):
        hs_auth.verify(hs256(claims(**{missing: None})))


@pytest.mark.parametrize("sub", ["", 42, "x" * 129])
def test_authenticator_verify_bad_sub_unauthorized(hs_auth: Authenticator, sub: object) -> None:
    with pytest.raises(Unauthorized):
        hs_auth.verify(hs256(claims(sub=sub)))


@pytest.mark.parametrize("extra", [{"scope": ["a"]}, {"rooms": "lobby"}, {"rooms": [1]}])
def test_authenticator_verify_bad_claim_types_unauthorized(hs_auth: Authenticator,
                                                           extra: dict[str, Any]) -> None:
    with pytest.raises(Unauthorized):
        hs_auth.verify(hs256(claims(**extra)))


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "....", "\x00"])
def test_authenticator_verify_garbage_unauthorized(hs_auth: Authenticator, token: str) -> None:
    with pytest.raises(Unauthorized):
        hs_auth.verify(token)


def test_authenticator_verify_rs256_token_with_hs_config_unauthorized(
    hs_auth: Authenticator, rsa_keys: tuple[rsa.RSAPrivateKey, str]
) -> None:
    with pytest.raises(Unauthorized):
        hs_auth.verify(jwt.encode(claims(), rsa_keys[0], algorithm="RS256"))


# -- audience and issuer ----------------------------------------------------------


@pytest.fixture
def aud_iss_auth() -> Authenticator:
    return Authenticator(Settings.from_env({
        "JWT_SECRET": SECRET, "JWT_AUDIENCE": "hubbub", "JWT_ISSUER": "https://idp.example",
    }))


def test_authenticator_verify_matching_audience_issuer_accepted(aud_iss_auth: Authenticator) -> None:
    token = hs256(claims(aud="hubbub", iss="https://idp.example"))
    assert aud_iss_auth.verify(token).user == "alice"


@pytest.mark.parametrize("overrides", [
    {"aud": "other", "iss": "https://idp.example"},
    {"aud": None, "iss": "https://idp.example"},
    {"aud": "hubbub", "iss": "https://evil.example"},
    {"aud": "hubbub", "iss": None},
])
def test_authenticator_verify_wrong_or_missing_audience_issuer_unauthorized(
    aud_iss_auth: Authenticator, overrides: dict[str, Any]
) -> None:
    with pytest.raises(Unauthorized):
        aud_iss_auth.verify(hs256(claims(**overrides)))


# -- RS256 ---------------------------------------------------------------------


@pytest.fixture
def rs_auth(rsa_keys: tuple[rsa.RSAPrivateKey, str]) -> Authenticator:
    return Authenticator(Settings.from_env({"JWT_PUBLIC_KEY": rsa_keys[1].replace("\n", "\\n")}))


def test_authenticator_verify_rs256_with_public_key_accepted(
    rs_auth: Authenticator, rsa_keys: tuple[rsa.RSAPrivateKey, str]
) -> None:
    assert rs_auth.verify(jwt.encode(claims(), rsa_keys[0], algorithm="RS256")).user == "alice"
    assert rs_auth.can_issue is False
    with pytest.raises(RuntimeError):
        rs_auth.issue("alice")


def test_authenticator_verify_rs256_other_key_unauthorized(rs_auth: Authenticator) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthorized):
        rs_auth.verify(jwt.encode(claims(), other, algorithm="RS256"))


def test_authenticator_verify_rs256_expired_unauthorized(
    rs_auth: Authenticator, rsa_keys: tuple[rsa.RSAPrivateKey, str]
) -> None:
    with pytest.raises(Unauthorized, match="expired"):
        rs_auth.verify(jwt.encode(claims(exp=int(time.time()) - 60), rsa_keys[0], algorithm="RS256"))


def test_authenticator_verify_hs256_forged_with_public_key_unauthorized(
    rs_auth: Authenticator, rsa_keys: tuple[rsa.RSAPrivateKey, str]
) -> None:
    # Algorithm confusion: the public key is public, so an HS256 MAC over it proves nothing.
    with pytest.raises(Unauthorized):
        rs_auth.verify(forged_hs256(claims(sub="mallory"), rsa_keys[1].encode()))


def test_authenticator_verify_mixed_algorithms_forged_hs256_unauthorized(
    rsa_keys: tuple[rsa.RSAPrivateKey, str]
) -> None:
    # Settings refuses this mix; forced past it, verify must still answer 401, never raise
    # PyJWT's InvalidKeyError (a PyJWTError, not an InvalidTokenError) up to the transport.
    settings = Settings(jwt_public_key=rsa_keys[1], jwt_algorithms=("RS256",))
    object.__setattr__(settings, "jwt_algorithms", ("RS256", "HS256"))
    with pytest.raises(Unauthorized):
        Authenticator(settings).verify(forged_hs256(claims(sub="mallory"), rsa_keys[1].encode()))


# -- what a refused token is told -------------------------------------------------------
# PyJWT's own messages quote the token's header or a repr with a memory address; the client
# gets one fixed detail per kind of failure.


def handmade(header: dict[str, Any], payload: dict[str, Any] | None = None, signature: str = "c2ln") -> str:
    body = claims() if payload is None else payload
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(body).encode())}.{signature}"


def refusal(auth: Authenticator, token: str) -> str:
    with pytest.raises(Unauthorized) as caught:
        auth.verify(token)
    return caught.value.detail


@pytest.mark.parametrize(("token", "detail"), [  # token: made by a function, see below
    (lambda: hs256(claims(exp=int(time.time()) - 60)), "token expired"),
    (lambda: hs256(claims(), secret=OTHER_SECRET), "bad signature"),
    (lambda: "garbage", "malformed token"),
    (lambda: "a.b.c", "malformed token"),
    (lambda: handmade({"alg": "HS256"}, signature="!!"), "malformed token"),
    (lambda: hs256(claims(nbf=int(time.time()) + 300)), "token not valid yet"),
    (lambda: hs256(claims(iat=int(time.time()) + 300)), "token not valid yet"),
    (lambda: hs256(claims(exp=None)), "missing claim 'exp'"),
    (lambda: hs256(claims(sub=None)), "missing claim 'sub'"),
    (lambda: hs256(claims(exp="soon")), "malformed token"),
    (lambda: hs256(claims(sub=42)), "claim 'sub' must be a string"),
    (lambda: hs256(claims(iat="yesterday")), "claim 'iat' must be a number"),
    (lambda: hs256(claims(jti=7)), "claim 'jti' must be a string"),
    (lambda: jwt.encode(claims(), "", algorithm="none"), "algorithm not allowed"),
    (lambda: handmade({"typ": "JWT"}), "algorithm not allowed"),
    (lambda: handmade({"alg": "RS256"}), "algorithm not allowed"),
    (lambda: handmade({"alg": "HS256", "kid": 1}), "invalid token"),
    (lambda: handmade({"alg": "HS256", "crit": ["<b>x</b>"]}), "invalid token"),
], ids=["expired", "signature", "garbage", "segments", "bad-base64", "nbf", "iat-future", "no-exp", "no-sub",
        "exp-not-number", "sub-not-string", "iat-not-number", "jti-not-string", "alg-none", "no-alg",
        "alg-not-listed", "kid-not-string", "crit-unknown"])
def test_authenticator_verify_refusal_fixed_detail(hs_auth: Authenticator, token: Callable[[], str],
                                                   detail: str) -> None:
    # Made when the test runs, not when it is collected: the suite takes minutes, and a
    # token "not valid for 300 s" made at collection would be valid by then.
    assert refusal(hs_auth, token()) == detail


def test_authenticator_verify_wrong_audience_or_issuer_fixed_detail(aud_iss_auth: Authenticator) -> None:
    assert refusal(aud_iss_auth, hs256(claims(aud="other", iss="https://idp.example"))) == "wrong audience"
    assert refusal(aud_iss_auth, hs256(claims(aud="hubbub", iss="https://evil.example"))) == "wrong issuer"
    assert refusal(aud_iss_auth, hs256(claims(iss="https://idp.example"))) == "missing claim 'aud'"
    assert refusal(aud_iss_auth, hs256(claims(aud="hubbub"))) == "missing claim 'iss'"


@pytest.mark.parametrize("header", [
    {"alg": "ES256"},  # allowed by default with a public key; PyJWT's message held "<generator … at 0x…>"
    {"alg": "RS256", "kid": {"nested": [1]}},
    {"alg": "RS256", "crit": ["0x7f object at"]},
    {"alg": "RS256", "crit": [None]},
    {"alg": {"RS256": 1}},
    {"alg": "RS256", "b64": False, "crit": ["b64"]},
])
def test_authenticator_verify_odd_header_detail_without_address(
    rs_auth: Authenticator, header: dict[str, Any]
) -> None:
    detail = refusal(rs_auth, handmade(header))
    assert "0x" not in detail and "object at" not in detail and "<" not in detail
    assert detail in ("invalid token", "malformed token", "algorithm not allowed",
                      "the token's algorithm does not fit the server's key")


def test_authenticator_verify_key_type_mismatch_fixed_detail(rs_auth: Authenticator) -> None:
    detail = refusal(rs_auth, handmade({"alg": "ES256"}))
    assert detail == "the token's algorithm does not fit the server's key"


# -- issue ----------------------------------------------------------------------


def test_authenticator_issue_round_trips(aud_iss_auth: Authenticator) -> None:
    token = aud_iss_auth.issue("bob", scope="notify", ttl_s=60, rooms=["lobby"])
    principal = aud_iss_auth.verify(token)
    assert (principal.user, principal.scopes, principal.rooms) == ("bob", frozenset({"notify"}), ("lobby",))


# -- Principal -------------------------------------------------------------------


@pytest.mark.parametrize(("rooms", "room", "allowed"), [
    (None, "anything", True),
    ((), "lobby", False),
    (("lobby",), "lobby", True),
    (("lobby",), "lobby2", False),
    (("lobby",), "Lobby", False),  # case-sensitive
    (("team-*",), "team-red", True),
    (("team-*",), "team-", True),
    (("team-*",), "teamred", False),
    (("team-?",), "team-a", True),
    (("team-?",), "team-ab", False),
    (("team-[ab]",), "team-b", True),
    (("team-[ab]",), "team-c", False),
    (("a", "b*"), "bee", True),
    (("*",), "x", True),
])
def test_principal_may_join_globs(rooms: tuple[str, ...] | None, room: str, allowed: bool) -> None:
    principal = Principal("alice", rooms=rooms)
    assert principal.may_join(room) is allowed
    if allowed:
        principal.require_room(room)
    else:
        with pytest.raises(Forbidden):
            principal.require_room(room)


def test_principal_require_scope_missing_forbidden() -> None:
    principal = Principal("alice", scopes=frozenset({"notify"}))
    principal.require_scope("notify")
    with pytest.raises(Forbidden):
        principal.require_scope("admin")


# -- tickets ---------------------------------------------------------------------


async def test_ticket_redeem_once_then_unauthorized() -> None:
    backend = MemoryBackend()
    principal = Principal("alice", frozenset({"notify"}), ("team-*",), time.time() + 600)
    async with asyncio.timeout(TIMEOUT_S):
        ticket = await issue_ticket(backend, principal)
        assert await redeem_ticket(backend, ticket) == principal
        with pytest.raises(Unauthorized):
            await redeem_ticket(backend, ticket)


async def test_ticket_no_expiry_no_rooms_round_trips() -> None:
    backend = MemoryBackend()
    principal = Principal("alice")
    async with asyncio.timeout(TIMEOUT_S):
        assert await redeem_ticket(backend, await issue_ticket(backend, principal)) == principal


@pytest.mark.parametrize("ticket", ["", "unknown", "x" * 101])
async def test_ticket_unknown_or_oversized_unauthorized(ticket: str) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(Unauthorized):
            await redeem_ticket(MemoryBackend(), ticket)


async def test_ticket_for_expired_token_unauthorized() -> None:
    backend = MemoryBackend()
    async with asyncio.timeout(TIMEOUT_S):
        ticket = await issue_ticket(backend, Principal("alice", expires_at=time.time() - 1))
        with pytest.raises(Unauthorized, match="expired"):
            await redeem_ticket(backend, ticket)


async def test_ticket_past_its_ttl_unauthorized() -> None:
    backend = MemoryBackend()
    async with asyncio.timeout(TIMEOUT_S):
        await backend.store_ticket("ticket:old", Principal("alice").to_json(), ttl_s=-1)
        with pytest.raises(Unauthorized):
            await redeem_ticket(backend, "old")


async def test_ticket_store_keys_are_namespaced() -> None:
    backend = MemoryBackend()
    async with asyncio.timeout(TIMEOUT_S):
        ticket = await issue_ticket(backend, Principal("alice"))
        assert await backend.redeem_ticket(ticket) is None  # stored under ticket:<value> only
        assert await redeem_ticket(backend, ticket) == Principal("alice")


# -- where a token comes from -------------------------------------------------------


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"),
    ("bearer  abc ", "abc"),
    ("Basic abc", None),
    ("Bearer ", None),
    ("", None),
])
def test_bearer_token_header_parsed(header: str, token: str | None) -> None:
    assert bearer_token({"Authorization": header}) == token


async def test_authenticate_header_token_ticket_none(hs_auth: Authenticator) -> None:
    backend = MemoryBackend()
    token = hs256(claims(sub="bob"))

    async def user(headers: dict[str, str], args: dict[str, str]) -> str | None:
        principal = await authenticate(hs_auth, backend, headers, args, tickets=True)
        return None if principal is None else principal.user

    async with asyncio.timeout(TIMEOUT_S):
        assert await user({"Authorization": f"Bearer {token}"}, {}) == "bob"
        assert await user({}, {"token": token}) == "bob"
        ticket = await issue_ticket(backend, Principal("carol"))
        assert await user({}, {"ticket": ticket}) == "carol"
        assert await authenticate(hs_auth, backend, {}, {}, tickets=True) is None
        with pytest.raises(Unauthorized):
            await authenticate(hs_auth, backend, {}, {"token": "garbage"}, tickets=True)


async def test_authenticate_ticket_outside_live_endpoints_refused_and_kept(
        hs_auth: Authenticator) -> None:
    # A ticket opens one WebSocket or SSE stream and nothing else (not a POST, not a new ticket).
    backend = MemoryBackend()
    async with asyncio.timeout(TIMEOUT_S):
        ticket = await issue_ticket(backend, Principal("carol"))
        with pytest.raises(Unauthorized, match="ticket"):
            await authenticate(hs_auth, backend, {}, {"ticket": ticket}, tickets=False)
        principal = await authenticate(hs_auth, backend, {}, {"ticket": ticket}, tickets=True)
    assert principal is not None and principal.user == "carol"
