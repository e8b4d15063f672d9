"""Who is calling: JWT verification (pyjwt), where a token comes from, tickets, the Principal."""

from __future__ import annotations

import fnmatch
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from hubbub.config import Settings
from hubbub.errors import Forbidden, Unauthorized, Unavailable
from hubbub.hmac_tokens import HmacTokens
from hubbub.hub.backends.base import Backend, BackendUnavailable

TICKET_TTL_S = 30
AUTH_FRAME_TIMEOUT_S = 10.0
_LEEWAY_S = 5
# Tokens verified lately, by their exact text: a publisher or a page POSTing with the same
# bearer pays the signature check (about a tenth of a POST's CPU) once. Only tokens that
# verified are kept, each no longer than PyJWT would accept it, so none outlives its exp.
VERIFIED_CACHE_SIZE = 4096


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


NO_SCOPES: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    scopes: frozenset[str] = NO_SCOPES
    rooms: tuple[str, ...] | None = None  # glob patterns; None = every room
    expires_at: float | None = None  # Unix time
    demo: bool = False  # from the demo login: publishes within the chat rate limit
    api_key: bool = False  # an API key (API_KEYS): a backend, with its own publish rate limit

    def may_join(self, room: str) -> bool:
        if self.rooms is None:
            return True
        return any(fnmatch.fnmatchcase(room, pattern) for pattern in self.rooms)

    def require_room(self, room: str) -> None:
        if not self.may_join(room):
            raise Forbidden(f"this token does not allow room {room!r}")

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this token lacks scope {scope!r}")

    def seconds_left(self) -> float | None:
        return None if self.expires_at is None else self.expires_at - time.time()

    def to_json(self) -> str:
        return json.dumps({"sub": self.user, "scope": " ".join(sorted(self.scopes)),
                           "rooms": self.rooms, "exp": self.expires_at, "demo": self.demo})

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Principal:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise Unauthorized("claim 'sub' must be a non-empty string of at most 128 characters")
        if not _is_utf8(sub):  # JSON allows lone surrogates; every frame naming the user would fail
            raise Unauthorized("claim 'sub' must be valid Unicode")
        scope = claims.get("scope") or ""
        if not isinstance(scope, str):
            raise Unauthorized("claim 'scope' must be a space-separated string")
        rooms = claims.get("rooms")
        if rooms is not None and (
            not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms)
        ):
            raise Unauthorized("claim 'rooms' must be a list of strings")
        exp = claims.get("exp")
        return cls(
            user=sub,
            scopes=frozenset(scope.split()) if scope else NO_SCOPES,  # an empty frozenset is 216 B
            rooms=None if rooms is None else tuple(rooms),
            expires_at=float(exp) if isinstance(exp, int | float) else None,
            demo=claims.get("demo") is True,
        )


# PyJWT's messages may quote the token's own header (attacker text) or a repr with a memory
# address ("Expected one of <generator object … at 0x…>"): clients get a fixed detail per class.
# Most specific first: InvalidSignatureError is a DecodeError.
_JWT_ERROR_DETAILS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.ImmatureSignatureError, "token not valid yet"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidKeyError, "the token's algorithm does not fit the server's key"),
    (InvalidSubjectError, "claim 'sub' must be a string"),
    (jwt.InvalidIssuedAtError, "claim 'iat' must be a number"),
    (InvalidJTIError, "claim 'jti' must be a string"),
    (jwt.DecodeError, "malformed token"),
)
_CLAIM_NAMES = ("exp", "sub", "aud", "iss", "nbf", "iat")


def _jwt_error_detail(error: jwt.PyJWTError) -> str:
    """What a client is told about a token PyJWT refused; never the exception's own text."""
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"missing claim {error.claim!r}" if error.claim in _CLAIM_NAMES else "missing claim"
    for kind, detail in _JWT_ERROR_DETAILS:
        if isinstance(error, kind):
            return detail
    return "invalid token"


API_KEY_SCOPES = frozenset({"publish", "notify"})


class Authenticator:
    """Verifies tokens with the configured key and API keys; issues demo and command-line tokens."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._verify_key = settings.jwt_public_key or settings.jwt_secret
        self.can_issue = bool(settings.jwt_secret) and not settings.jwt_public_key
        self._api_keys = [(name, secret.encode()) for name, secret in settings.api_keys]
        self._verified: dict[str, Principal] = {}  # oldest first
        # Plain HMAC tokens without PyJWT's overhead; with an audience or issuer to check,
        # or a public key, PyJWT verifies every token.
        plain = bool(settings.jwt_secret) and not settings.jwt_public_key \
            and settings.jwt_audience is None and settings.jwt_issuer is None
        self._hmac = HmacTokens(settings.jwt_secret, settings.jwt_algorithms if plain else (), _LEEWAY_S)

    def api_key(self, secret: str) -> Principal | None:
        """The backend an API key names, or None. Every key is compared, in constant time,
        so how long it takes says nothing about which key came close."""
        given = secret.encode()
        found = None
        for name, key in self._api_keys:
            if hmac.compare_digest(given, key):
                found = name
        return None if found is None else Principal(found, scopes=API_KEY_SCOPES, api_key=True)

    def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None:
            if known.expires_at is None or time.time() <= known.expires_at + _LEEWAY_S:
                return known
            del self._verified[token]
        principal = self._decode(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = principal
        return principal

    def _decode(self, token: str) -> Principal:
        if self._hmac.enabled and (claims := self._hmac.claims(token, time.time())) is not None:
            return Principal.from_claims(claims)
        s = self._settings
        try:
            claims = jwt.decode(
                token,
                self._verify_key,
                algorithms=list(s.jwt_algorithms),
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=_LEEWAY_S,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as exc:  # InvalidTokenError, and key errors from odd headers
            raise Unauthorized(_jwt_error_detail(exc)) from None
        return Principal.from_claims(claims)

    def issue(self, user: str, *, scope: str = "", ttl_s: int = 3600,
              rooms: list[str] | None = None, demo: bool = False) -> str:
        if not self.can_issue:
            raise RuntimeError("tokens can only be issued with JWT_SECRET (HS256)")
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + ttl_s}
        if scope:
            claims["scope"] = scope
        if rooms is not None:
            claims["rooms"] = rooms
        if demo:
            claims["demo"] = True
        if self._settings.jwt_audience:
            claims["aud"] = self._settings.jwt_audience
        if self._settings.jwt_issuer:
            claims["iss"] = self._settings.jwt_issuer
        algorithm = next((a for a in self._settings.jwt_algorithms if a.startswith("HS")), "HS256")
        return jwt.encode(claims, self._settings.jwt_secret, algorithm=algorithm)


class Lookup(Protocol):
    """Headers or query arguments: a plain dict, or werkzeug's Headers / MultiDict."""

    def get(self, key: str, /) -> str | None: ...


def bearer_token(headers: Lookup) -> str | None:
    value = headers.get("Authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def issue_ticket(backend: Backend, principal: Principal) -> str:
    ticket = secrets.token_urlsafe(24)
    await backend.store_ticket(f"ticket:{ticket}", principal.to_json(), TICKET_TTL_S)
    return ticket


async def redeem_ticket(backend: Backend, ticket: str) -> Principal:
    if len(ticket) > 100:
        raise Unauthorized("invalid ticket")
    try:
        payload = await backend.redeem_ticket(f"ticket:{ticket}")
    except BackendUnavailable:
        raise Unavailable("the ticket store is unreachable", retry_after=2) from None
    if payload is None:
        raise Unauthorized("ticket unknown, used or expired")
    principal = Principal.from_claims(json.loads(payload))
    left = principal.seconds_left()
    if left is not None and left <= 0:
        raise Unauthorized("token expired")
    return principal


async def authenticate(
    authenticator: Authenticator, backend: Backend,
    headers: Lookup, args: Lookup, *, tickets: bool,
) -> Principal | None:
    """The principal from the header, the ``token`` query parameter, or (``tickets``: on the
    live endpoints, where a ticket opens one stream) the ``ticket`` query parameter.

    None when the request carries none of them; Unauthorized when one is wrong.
    """
    key = headers.get("X-API-Key")
    if key:  # headers only: a key never sits in a URL or a log
        principal = authenticator.api_key(key)
        if principal is None:
            raise Unauthorized("unknown API key")
        return principal
    bearer = bearer_token(headers)
    if bearer and (principal := authenticator.api_key(bearer)) is not None:
        return principal
    token = bearer or args.get("token")
    if token:
        return authenticator.verify(token)
    ticket = args.get("ticket")
    if ticket and tickets:
        return await redeem_ticket(backend, ticket)
    if ticket:
        raise Unauthorized("a ticket opens one WebSocket or SSE stream; use a token here")
    return None
