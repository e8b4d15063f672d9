"""The HMAC fast path accepts only what PyJWT accepts, with the same claims, and takes the
tokens hubbub and its users commonly issue (else it would save nothing)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubbub.auth import Authenticator
from hubbub.config import Settings
from hubbub.hmac_tokens import HmacTokens

SECRET = "a-test-secret-long-enough-for-hs512-" * 2
OTHER = "another-secret-long-enough-for-hs512" * 2
LEEWAY = 5
ALLOWED = ("HS256", "HS384")
NOW = int(time.time())  # at collection: tokens made here stay valid (or not) for an hour
HOUR = 3600


def pyjwt_claims(token: str, algorithms: tuple[str, ...] = ALLOWED) -> dict[str, Any] | None:
    """What hubbub's PyJWT call makes of a token: its claims, or None where it refuses it."""
    try:
        return jwt.decode(token, SECRET, algorithms=list(algorithms), leeway=LEEWAY,  # type: ignore[no-any-return]
                          options={"require": ["exp", "sub"]})
    except jwt.PyJWTError:
        return None


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token_of(header: Any, claims: Any, *, secret: str = SECRET, digest: str = "sha256") -> str:
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signing.encode(), getattr(hashlib, digest)).digest()
    return f"{signing}.{b64(signature)}"


def test_the_tokens_hubbub_and_its_users_issue_take_the_fast_path() -> None:
    fast = HmacTokens(SECRET, ALLOWED, LEEWAY)
    issuer = Authenticator(Settings(jwt_secret=SECRET))
    tokens = [
        issuer.issue("bob"),
        issuer.issue("alice", scope="notify publish", rooms=["lobby", "team-*"], demo=True),
        jwt.encode({"sub": "u1", "exp": NOW + HOUR}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "u1", "exp": NOW + HOUR, "iat": NOW, "nbf": NOW}, SECRET, algorithm="HS384"),
        jwt.encode({"sub": "u1", "exp": NOW + HOUR, "iss": "somebody"}, SECRET, algorithm="HS256"),
    ]
    for token in tokens:
        claims = fast.claims(token, time.time())
        assert claims is not None, token
        assert claims == pyjwt_claims(token)


@pytest.mark.parametrize("token", [
    token_of({"alg": "none", "typ": "JWT"}, {"sub": "u", "exp": NOW + HOUR}),
    token_of({"alg": "HS512", "typ": "JWT"}, {"sub": "u", "exp": NOW + HOUR}, digest="sha512"),  # not allowed
    token_of({"alg": "HS256"}, {"sub": "u", "exp": NOW + HOUR}, secret=OTHER),
    token_of({"alg": "HS256", "kid": "k1"}, {"sub": "u", "exp": NOW + HOUR}),
    token_of({"alg": "HS256", "typ": "at+jwt"}, {"sub": "u", "exp": NOW + HOUR}),
    token_of({"alg": "HS256"}, {"sub": "u", "exp": NOW - LEEWAY - 2}),
    token_of({"alg": "HS256"}, {"sub": "u", "exp": float(NOW + HOUR)}),
    token_of({"alg": "HS256"}, {"sub": "u", "exp": True}),
    token_of({"alg": "HS256"}, {"sub": "u", "exp": str(NOW + HOUR)}),
    token_of({"alg": "HS256"}, {"sub": "u"}),
    token_of({"alg": "HS256"}, {"sub": 7, "exp": NOW + HOUR}),
    token_of({"alg": "HS256"}, {"sub": "u", "exp": NOW + HOUR, "iat": NOW + HOUR}),
    token_of({"alg": "HS256"}, {"sub": "u", "exp": NOW + HOUR, "nbf": NOW + HOUR}),
    token_of({"alg": "HS256"}, {"sub": "u", "exp": NOW + HOUR, "aud": "x"}),
    token_of({"alg": "HS256"}, {"sub": "u", "exp": NOW + HOUR, "jti": "x"}),
    token_of({"alg": "HS256"}, ["not", "an", "object"]),
    token_of({"alg": "HS256"}, {"sub": "u", "exp": NOW + HOUR}) + "=",
    token_of({"alg": "HS256"}, {"sub": "u", "exp": NOW + HOUR}) + ".x",
    " " + token_of({"alg": "HS256"}, {"sub": "u", "exp": NOW + HOUR}),
    token_of({"alg": "HS256"}, {"sub": "u", "exp": NOW + HOUR}).replace(".", ".é", 1),
])
def test_anything_but_a_plain_valid_token_is_left_to_pyjwt(token: str) -> None:
    assert HmacTokens(SECRET, ALLOWED, LEEWAY).claims(token, time.time()) is None


def test_a_secret_pyjwt_refuses_turns_the_fast_path_off() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----"
    assert not HmacTokens(pem, ALLOWED, LEEWAY).enabled


def test_an_audience_issuer_or_public_key_leaves_every_token_to_pyjwt() -> None:
    for extra in ({"jwt_audience": "hub"}, {"jwt_issuer": "auth"}):
        assert not Authenticator(Settings(jwt_secret=SECRET, **extra))._hmac.enabled
    assert Authenticator(Settings(jwt_secret=SECRET))._hmac.enabled


class FromNow(int):
    """A time claim, as seconds from when the token is made."""


def _clear_of_the_edges(offset: int) -> bool:
    """Not within 2 s of where exp or iat/nbf turn: the two checks read the clock apart."""
    return all(abs(offset - edge) > 2 for edge in (-LEEWAY, LEEWAY))


_VALUES = st.one_of(st.integers(-10_000, 10_000).filter(_clear_of_the_edges).map(FromNow),
                    st.floats(allow_nan=False), st.booleans(), st.text(max_size=5), st.none(),
                    st.lists(st.integers(), max_size=2))
# One change or two to a token PyJWT accepts: most examples stay near the edge of acceptance.
_CHANGES = st.lists(st.one_of(
    st.tuples(st.just("alg"), st.sampled_from(["HS384", "HS512", "none", "RS256", "hs256", ""])),
    st.tuples(st.just("header"), st.sampled_from(["typ", "kid", "b64", "crit", "cty"]), _VALUES),
    st.tuples(st.just("drop header"), st.sampled_from(["typ", "alg"])),
    st.tuples(st.just("claim"), st.sampled_from(["sub", "exp", "iat", "nbf", "aud", "jti", "iss", "scope"]),
              _VALUES),
    st.tuples(st.just("drop claim"), st.sampled_from(["sub", "exp"])),
    st.tuples(st.just("secret")), st.tuples(st.just("digest"), st.sampled_from(["sha384", "sha512"])),
    st.tuples(st.just("mangle"), st.sampled_from(["pad", "flip", "plus", "space", "segments"])),
), max_size=2)


def _changed(changes: list[tuple[Any, ...]]) -> str:
    now = int(time.time())
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    claims: dict[str, Any] = {"sub": "u", "exp": now + 600}
    secret, digest, mangles = SECRET, "sha256", []
    for change in changes:
        kind = change[0]
        if kind == "alg":
            header["alg"] = change[1]
            digest = {"HS384": "sha384", "HS512": "sha512"}.get(change[1], digest)
        elif kind == "header":
            header[change[1]] = change[2]
        elif kind == "drop header":
            header.pop(change[1], None)
        elif kind == "claim":
            value = change[2]
            claims[change[1]] = now + int(value) if isinstance(value, FromNow) else value
        elif kind == "drop claim":
            claims.pop(change[1], None)
        elif kind == "secret":
            secret = OTHER
        elif kind == "digest":
            digest = change[1]
        else:
            mangles.append(change[1])
    token = token_of(header, claims, secret=secret, digest=digest)
    for mangle in mangles:
        if mangle == "pad":
            token += "="
        elif mangle == "flip":
            token = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
        elif mangle == "plus":
            token = token.replace("-", "+").replace("_", "/")
        elif mangle == "space":
            token = token.replace(".", ". ", 1)
        else:
            token = token.rsplit(".", 1)[0]
    return token


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=_CHANGES)
def test_the_fast_path_accepts_exactly_what_pyjwt_accepts_plainly(changes: list[tuple[Any, ...]]) -> None:
    """Never a token PyJWT refuses; and a refusal only of what it leaves to PyJWT on purpose."""
    token = _changed(changes)
    fast = HmacTokens(SECRET, ALLOWED, LEEWAY).claims(token, time.time())
    expected = pyjwt_claims(token)
    if fast is not None:
        assert fast == expected
    elif expected is not None:  # PyJWT accepts it: the fast path must have had a reason to pass
        deferred = {"aud", "jti"} & expected.keys() or type(expected["exp"]) is not int \
            or any(k in expected and type(expected[k]) is not int for k in ("iat", "nbf")) \
            or "=" in token or " " in token or "+" in token or "/" in token \
            or any(kind in ("header", "drop header") for kind, *_ in changes)
        assert deferred, (changes, expected)
