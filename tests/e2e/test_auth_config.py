"""Auth as configured: demo login (ephemeral secret, DEMO_LOGIN), audience/issuer, public keys."""

from __future__ import annotations

import base64
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import SECRET, LiveServer, ServerFactory, make_token
from tests.e2e.clients import bearer, recv_json, ws_connect

# -- demo login -------------------------------------------------------------------------


async def test_demo_token_without_jwt_secret_issues_working_token(server_factory: ServerFactory) -> None:
    server = await server_factory({"JWT_SECRET": ""})  # empty = unset: ephemeral secret
    async with server.http() as client:
        reply = await client.post("/auth/demo-token", json={"user": "alice"})
        assert reply.status_code == 200
        body = reply.json()
        assert body["expires_in"] == 3600
        posted = await client.post("/api/rooms/lobby/messages", content=b"hi",
                                   headers=bearer(body["token"]))
        assert posted.status_code == 202
        foreign = await client.get("/api/rooms/lobby/messages", headers=bearer(make_token("alice")))
        assert foreign.status_code == 401  # the tests' secret is not this server's
    async with ws_connect(f"{server.ws_url}/ws/chat?room=lobby&token={body['token']}") as ws:
        assert (await recv_json(ws))["user"] == "alice"


async def test_demo_token_with_jwt_secret_and_no_demo_login_403(live_server: LiveServer) -> None:
    async with live_server.http() as client:
        reply = await client.post("/auth/demo-token", json={"user": "alice"})
    assert (reply.status_code, reply.json()["error"]) == (403, "forbidden")


async def test_demo_token_with_demo_login_1_signed_with_secret(server_factory: ServerFactory) -> None:
    server = await server_factory({"DEMO_LOGIN": "1"})
    async with server.http() as client:
        reply = await client.post("/auth/demo-token", json={"user": "alice"})
        bad = await client.post("/auth/demo-token", json={"user": "no spaces!"})
    assert reply.status_code == 200
    assert jwt.decode(reply.json()["token"], SECRET, algorithms=["HS256"])["sub"] == "alice"
    assert (bad.status_code, bad.json()["error"]) == (400, "bad_request")


# -- configured verification: audience/issuer, public keys --------------------------------


def hs256_signed_with(key: bytes, claims: dict[str, object]) -> str:
    """An HS256 token built by hand (pyjwt refuses a PEM as an HMAC secret; attackers do not)."""
    def part(value: bytes) -> bytes:
        return base64.urlsafe_b64encode(value).rstrip(b"=")

    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + b"." + part(json.dumps(claims).encode())
    return (signing_input + b"." + part(hmac.digest(key, signing_input, "sha256"))).decode()


async def test_audience_and_issuer_when_configured_are_required(server_factory: ServerFactory) -> None:
    server = await server_factory({"JWT_AUDIENCE": "hubbub", "JWT_ISSUER": "https://id.example"})
    base = {"sub": "alice", "exp": int(time.time()) + 600}
    cases = [({"aud": "other", "iss": "https://id.example"}, 401), ({"aud": "hubbub"}, 401),
             ({"aud": "hubbub", "iss": "https://evil.example"}, 401), ({}, 401),
             ({"aud": "hubbub", "iss": "https://id.example"}, 202)]
    async with server.http() as client:
        for extra, status in cases:
            token = jwt.encode({**base, **extra}, SECRET, algorithm="HS256")
            reply = await client.post("/api/rooms/lobby/messages", content=b"hi", headers=bearer(token))
            assert reply.status_code == status, extra


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_public_key_accepts_signed_tokens_refuses_hs256_and_demo(
    server_factory: ServerFactory, alg: str,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256" \
        else ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    # One line with literal \n, as a Heroku config var holds it.
    server = await server_factory({"JWT_SECRET": "", "JWT_PUBLIC_KEY": pem.decode().replace("\n", "\\n")})
    claims: dict[str, object] = {"sub": "alice", "exp": int(time.time()) + 600}
    async with server.http() as client:
        async def status(token: str) -> int:
            reply = await client.get("/api/rooms/lobby/messages", headers=bearer(token))
            return reply.status_code

        assert await status(jwt.encode(claims, key, algorithm=alg)) == 200
        assert await status(make_token("alice")) == 401
        assert await status(hs256_signed_with(pem, claims)) == 401  # algorithm confusion
        demo = await client.post("/auth/demo-token", json={"user": "alice"})
        assert demo.status_code == 403
