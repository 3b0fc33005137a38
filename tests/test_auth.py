"""Authentication and tenant isolation on a real worker whose keys come from a real JWKS server on loopback.

The attack suite sends each known way to forge or misuse a JWT (RFC 8725) and expects 401 with a stable code,
never a 5xx; two tenants' tokens then show that a session is invisible to every tenant but its own, on every
endpoint and both streams; stream tickets are single-use and bound to their session; a stream ends when its
token expires.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.auth import ANONYMOUS, Authenticator, InvalidToken, Unauthenticated
from app.settings import Settings
from deploy.localstack.base import free_port
from tests.support import secrets
from tests.support.client import SseReader, ws_frames
from tests.support.db import query, wait_rows
from tests.support.isolation import Isolated
from tests.support.worker import Worker, running

ISSUER = "https://issuer.test"
AUDIENCE = "somaagent01"
SECRET = "a-shared-secret-of-at-least-32-bytes!"


class Keys:
    """An RSA and an EC key pair, published by kid."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # never published

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key()))
        return {
            "keys": [
                {**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
                {**ec_jwk, "kid": "ec-1", "alg": "ES256", "use": "sig"},
            ]
        }

    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def claims(tenant: str | None = "acme", **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    found: dict[str, Any] = {
        "sub": "user-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "scope": "chat",
    }
    if tenant is not None:
        found["tenant"] = tenant
    found.update(changes)
    return {k: v for k, v in found.items() if v is not None}


class JwksServer:
    """A real HTTP server publishing the keys; ``mode`` makes it answer normally, fail, or hang."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.mode = "ok"
        self.fetches = 0
        self.url = ""
        self.released = asyncio.Event()  # a "slow" fetch hangs until the server is torn down

    async def handle(self, _: web.Request) -> web.Response:
        self.fetches += 1
        if self.mode == "down":
            return web.Response(status=503, text="down")
        if self.mode == "slow":
            await self.released.wait()
        return web.json_response(self.keys.jwks())


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
async def jwks(keys: Keys) -> AsyncIterator[JwksServer]:
    server = JwksServer(keys)
    app = web.Application()
    app.add_routes([web.get("/jwks.json", server.handle)])
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.url = f"http://127.0.0.1:{port}/jwks.json"
    yield server
    server.released.set()
    await runner.cleanup()


@pytest.fixture(scope="module")
async def worker(iso_module: Isolated, jwks: JwksServer, artifacts: Path) -> AsyncIterator[Worker]:
    env = iso_module.env(
        SOMA_AUTH_REQUIRED="1",
        SOMA_JWKS_URL=jwks.url,
        SOMA_JWT_ISSUER=ISSUER,
        SOMA_JWT_AUDIENCE=AUDIENCE,
        SOMA_JWKS_MIN_REFETCH_SECONDS="0",
        SOMA_JWKS_TIMEOUT_SECONDS="1",
    )
    async with running(env, artifacts / "logs" / f"auth-{iso_module.tag}.log") as worker:
        yield worker


def rs(keys: Keys, body: dict[str, Any], kid: str = "rsa-1") -> str:
    return jwt.encode(body, keys.rsa, algorithm="RS256", headers={"kid": kid})


def es(keys: Keys, body: dict[str, Any]) -> str:
    return jwt.encode(body, keys.ec, algorithm="ES256", headers={"kid": "ec-1"})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(body: dict[str, Any]) -> str:
    """``alg: none``: a token with no signature at all."""
    return b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + b64(json.dumps(body).encode()) + "."


def hs_with_public_key(keys: Keys, body: dict[str, Any]) -> str:
    """HS256 signed with the RSA public key's PEM as the secret (the key-confusion attack); pyjwt refuses to
    make it, so it is signed here by hand."""
    import hashlib
    import hmac

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = b64(json.dumps(body).encode())
    signature = hmac.new(keys.rsa_public_pem(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


async def call(
    worker: Worker, method: str, path: str, token: str | None = None, body: Any = None, **headers: str
) -> tuple[int, dict[str, str], Any]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, worker.url + path, json=body, headers=headers) as resp,
    ):
        text = await resp.text()
        answer = json.loads(text) if text else None
    if isinstance(answer, dict) and isinstance(answer.get("ticket"), str):
        secrets.remember(answer["ticket"])  # a ticket must not reach a log (checked at the end of the suite)
    return resp.status, dict(resp.headers), answer


async def post(worker: Worker, token: str | None, session: str, text: str = "hi", **extra: Any) -> tuple[int, Any]:
    status, _, answer = await call(
        worker, "POST", "/v1/session/message", token, {"session_id": session, "message": text, **extra}
    )
    return status, answer


async def test_no_token_is_401_with_a_bearer_challenge(worker: Worker) -> None:
    for method, path in [
        ("POST", "/v1/session/message"),
        ("GET", "/v1/session/anything"),
        ("GET", "/v1/session/anything/events"),
        ("GET", "/v1/worker"),
        ("POST", "/v1/stream-tickets"),
    ]:
        status, headers, body = await call(worker, method, path, body={} if method == "POST" else None)
        assert (status, body["error"]["code"]) == (401, "unauthenticated"), (method, path, body)
        assert headers["WWW-Authenticate"] == 'Bearer realm="somaagent01"'
    # what stays open: health, the OpenAPI document, the console
    for path in ["/health", "/openapi.json", "/"]:
        status, _, _ = await call(worker, "GET", path) if path != "/" else (await _page(worker), {}, None)
        assert status == 200, path


async def _page(worker: Worker) -> int:
    async with aiohttp.ClientSession() as http, http.get(worker.url + "/") as resp:
        return resp.status


async def test_the_attack_suite_is_refused_with_401_and_never_a_5xx(worker: Worker, keys: Keys) -> None:
    now = int(time.time())
    attacks = {
        "alg none": unsigned(claims()),
        "HS256 signed with the RS public key": hs_with_public_key(keys, claims()),
        "expired": rs(keys, claims(exp=now - 120)),
        "nbf in the future": rs(keys, claims(nbf=now + 600)),
        "no exp": rs(keys, claims(exp=None)),
        "wrong aud": rs(keys, claims(aud="someone-else")),
        "wrong iss": rs(keys, claims(iss="https://evil.test")),
        "unknown kid": rs(keys, claims(), kid="rsa-404"),
        "kid with path characters": rs(keys, claims(), kid="../../etc/passwd"),
        "signed by an unpublished key": jwt.encode(claims(), keys.other, algorithm="RS256", headers={"kid": "rsa-1"}),
        "malformed segments": "not.a.jwt",
        "two segments": "eyJhbGciOiJSUzI1NiJ9.e30",
        "garbage base64": "@@@.###.$$$",
        "oversized": rs(keys, claims(padding="x" * 5_000)),
        "no tenant claim": rs(keys, claims(tenant=None)),
        "payload altered after signing": _altered(rs(keys, claims())),
    }
    for name, token in attacks.items():
        status, headers, body = await call(worker, "GET", "/v1/session/some-session", token)
        assert status == 401, (name, status, body)
        assert body["error"]["code"] == "invalid_token", (name, body)
        assert headers["WWW-Authenticate"] == 'Bearer realm="somaagent01", error="invalid_token"'
        assert token not in json.dumps(body), f"{name}: the answer repeats the token"
    # a token beyond any header's limit is refused by the HTTP layer first, in the same envelope
    status, _, body = await call(worker, "GET", "/v1/session/some-session", rs(keys, claims(padding="x" * 20_000)))
    assert (status, body["error"]["code"]) == (431, "request_head_too_large")
    # not a bearer header at all
    status, _, body = await call(worker, "GET", "/v1/session/some-session", Authorization="Basic dXNlcjpwYXNz")
    assert (status, body["error"]["code"]) == (401, "invalid_token")
    # a good token of each key type passes
    for token in (rs(keys, claims()), es(keys, claims())):
        status, _, body = await call(worker, "GET", "/v1/session/never-made", token)
        assert (status, body["error"]["code"]) == (404, "session_not_found"), body


def _altered(token: str) -> str:
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["tenant"] = "someone-else"
    return f"{header}.{b64(json.dumps(body).encode())}.{signature}"


async def test_a_session_is_invisible_to_another_tenant_everywhere(
    worker: Worker, keys: Keys, iso_module: Isolated
) -> None:
    acme = rs(keys, claims("acme", sub="alice"))
    other = es(keys, claims("globex", sub="mallory"))
    session = f"iso-{uuid.uuid4().hex[:8]}"
    # the client claims another tenant in its metadata: the token's claims win
    status, answer = await post(worker, acme, session, metadata={"tenant": "globex", "subject": "x", "lang": "en"})
    assert status == 202, answer
    rows = await wait_rows(
        iso_module.settings.postgres_dsn, "SELECT payload FROM session_events WHERE session_id = %s", (session,), 1
    )
    metadata = rows[0]["payload"]["metadata"]
    assert metadata == {"tenant": "acme", "subject": "alice", "issuer": ISSUER, "scope": "chat", "lang": "en"}
    (envelope_row,) = query(
        iso_module.settings.postgres_dsn, "SELECT tenant FROM session_envelopes WHERE session_id = %s", (session,)
    )
    assert envelope_row["tenant"] == "acme"

    # the owner sees it
    status, _, envelope = await call(worker, "GET", f"/v1/session/{session}", acme)
    assert (status, envelope["tenant"], envelope["last_seq"]) == (200, "acme", 1)

    # another tenant: 404 on read, history, SSE, WebSocket, post, idempotent retry and ticket, like a missing one
    not_found = {"error": {"code": "session_not_found", "message": f"no session {session}"}}
    for method, path, body in [
        ("GET", f"/v1/session/{session}", None),
        ("GET", f"/v1/session/{session}/events", None),
        ("POST", "/v1/session/message", {"session_id": session, "message": "intrude"}),
        ("POST", "/v1/stream-tickets", {"session_id": session}),
    ]:
        status, _, answer = await call(worker, method, path, other, body)
        assert (status, answer) == (404, not_found), (method, path, answer)
    status, _, answer = await call(
        worker,
        "POST",
        "/v1/session/message",
        other,
        {"session_id": session, "message": "x"},
        **{"Idempotency-Key": "k1"},
    )
    assert (status, answer) == (404, not_found)
    status, _, answer = await call(
        worker, "GET", f"/v1/session/{session}/events?after=0", other, Accept="text/event-stream"
    )
    assert (status, answer) == (404, not_found)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                f"{worker.url}/v1/session/{session}/stream?after=0", headers={"Authorization": f"Bearer {other}"}
            )
        assert refused.value.status == 404
    # nothing of the other tenant reached the session
    assert (
        len(query(iso_module.settings.postgres_dsn, "SELECT 1 FROM session_events WHERE session_id = %s", (session,)))
        == 1
    )


async def test_idempotency_keys_belong_to_their_caller(worker: Worker, keys: Keys) -> None:
    alice = rs(keys, claims("acme", sub="alice"))
    bob = rs(keys, claims("acme", sub="bob"))
    headers = {"Idempotency-Key": f"key-{uuid.uuid4().hex[:8]}"}
    body = {"message": "same key, two callers"}
    first = await call(worker, "POST", "/v1/session/message", alice, body, **headers)
    again = await call(worker, "POST", "/v1/session/message", alice, body, **headers)
    other = await call(worker, "POST", "/v1/session/message", bob, body, **headers)
    assert first[0] == again[0] == other[0] == 202
    assert first[2] == again[2]  # the caller's retry gets its first answer
    assert other[2]["event_id"] != first[2]["event_id"] and other[2]["session_id"] != first[2]["session_id"]


async def test_stream_tickets_are_single_use_bound_to_their_session(
    worker: Worker, keys: Keys, iso_module: Isolated
) -> None:
    token = rs(keys, claims("acme"))
    session = f"tix-{uuid.uuid4().hex[:8]}"
    assert (await post(worker, token, session, "before the stream"))[0] == 202
    await wait_rows(
        iso_module.settings.postgres_dsn, "SELECT 1 FROM session_events WHERE session_id = %s", (session,), 1
    )
    status, _, issued = await call(worker, "POST", "/v1/stream-tickets", token, {"session_id": session})
    assert status == 201 and issued["session_id"] == session and 1 <= issued["expires_in"] <= 30
    ticket = issued["ticket"]
    url = f"{worker.url}/v1/session/{session}/events?ticket={ticket}"
    async with aiohttp.ClientSession() as http:
        # a ticket for this session does not open another one (and is spent by the try)
        async with http.get(
            f"{worker.url}/v1/session/elsewhere/events?ticket={ticket}", headers={"Accept": "text/event-stream"}
        ) as resp:
            assert resp.status == 401
        status, _, fresh = await call(worker, "POST", "/v1/stream-tickets", token, {"session_id": session})
        url = f"{worker.url}/v1/session/{session}/events?ticket={fresh['ticket']}"
        async with http.get(url, headers={"Accept": "text/event-stream"}) as resp:
            assert resp.status == 200
            reader = SseReader(resp)
            await reader.block()  # retry:
            (first,) = await reader.events(1, timeout=30)
            assert first["data"]["message"] == "before the stream"
        # used once: refused the second time
        async with http.get(url, headers={"Accept": "text/event-stream"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "invalid_token"
        # a WebSocket opened by a ticket, as a browser does
        status, _, for_ws = await call(worker, "POST", "/v1/stream-tickets", token, {"session_id": session})
        async with http.ws_connect(f"{worker.url}/v1/session/{session}/stream?ticket={for_ws['ticket']}") as ws:
            (frame,) = await ws_frames(ws, 1, timeout=30)
            assert frame["message"] == "before the stream"
        # the auth cookie opens an SSE stream (EventSource sends cookies), never a WebSocket
        cookies = {"soma_token": token}
        async with http.get(
            f"{worker.url}/v1/session/{session}/events", headers={"Accept": "text/event-stream"}, cookies=cookies
        ) as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                f"{worker.url}/v1/session/{session}/stream", headers={"Cookie": f"soma_token={token}"}
            )
        assert refused.value.status == 401


async def test_a_stream_ends_when_its_token_expires(worker: Worker, keys: Keys) -> None:
    session = f"exp-{uuid.uuid4().hex[:8]}"
    lasting = rs(keys, claims("acme"))
    assert (await post(worker, lasting, session, "one"))[0] == 202
    # expired a moment ago but within the worker's leeway (10 s): accepted at the handshake, ended at once
    short = rs(keys, claims("acme", exp=int(time.time()) - 1))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{worker.url}/v1/session/{session}/stream", headers={"Authorization": f"Bearer {short}"}
        ) as ws,
    ):
        deadline = time.monotonic() + 60
        while True:
            message = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
        assert ws.close_code == 1008
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{worker.url}/v1/session/{session}/events",
            headers={"Accept": "text/event-stream", "Authorization": f"Bearer {short}"},
        ) as resp,
    ):
        assert resp.status == 200
        body = b""
        try:
            async with asyncio.timeout(60):
                async for chunk in resp.content.iter_any():
                    body += chunk
        except TimeoutError:
            raise AssertionError(f"the server did not end the stream; it sent {body!r}") from None
        assert b"event: end\ndata: " in body and b'"reason":"token_expired"' in body


async def test_keys_that_cannot_be_fetched_refuse_new_kids_within_the_timeout(
    worker: Worker, keys: Keys, jwks: JwksServer
) -> None:
    cached = rs(keys, claims("acme"))
    assert (await call(worker, "GET", "/v1/session/cached-kid", cached))[0] == 404  # rsa-1 is cached now
    try:
        for mode in ("down", "slow"):
            jwks.mode = mode
            began = time.monotonic()
            status, _, body = await call(worker, "GET", "/v1/session/x", rs(keys, claims(), kid=f"new-{mode}"))
            assert (status, body["error"]["code"]) == (401, "invalid_token"), body
            assert "could not be fetched" in body["error"]["message"]
            assert time.monotonic() - began < 25, "the fetch was not bounded by SOMA_JWKS_TIMEOUT_SECONDS"
            # a key fetched before keeps working while the issuer is away
            status, _, _ = await call(worker, "GET", "/v1/session/cached-kid", cached)
            assert status == 404
    finally:
        jwks.mode = "ok"


# -- the verifier alone (no server): shared secrets and PEM keys, and settings that cannot be safe ----------


def _settings(**values: Any) -> Settings:
    return Settings.from_env({f"SOMA_{k.upper()}": str(v) for k, v in values.items()})


def _never_called() -> aiohttp.ClientSession:
    raise AssertionError("no JWKS here")


async def test_hs256_and_pem_verifiers_accept_their_family_only(keys: Keys, tmp_path: Path) -> None:
    hs = Authenticator(
        await asyncio.to_thread(lambda: _settings(auth_required=1, jwt_secret=SECRET).auth()), _never_called
    )
    good = jwt.encode(claims(aud=None), SECRET, algorithm="HS256")
    found = await hs.principal(good)
    assert (found.tenant, found.subject, found.scope) == ("acme", "user-1", "chat")
    for bad in (rs(keys, claims(aud=None)), jwt.encode(claims(aud=None), SECRET + "x", algorithm="HS256")):
        with pytest.raises(InvalidToken):
            await hs.principal(bad)
    with pytest.raises(Unauthenticated):
        await hs.principal(None)

    pem = tmp_path / "key.pem"
    await asyncio.to_thread(pem.write_bytes, keys.rsa_public_pem())
    rsa_settings = await asyncio.to_thread(lambda: _settings(auth_required=1, jwt_public_key=pem).auth())
    rsa_verifier = Authenticator(rsa_settings, _never_called)
    assert (await rsa_verifier.principal(rs(keys, claims(aud=None)))).tenant == "acme"
    with pytest.raises(InvalidToken):
        await rsa_verifier.principal(hs_with_public_key(keys, claims(aud=None)))

    off = Authenticator(await asyncio.to_thread(lambda: _settings().auth()), _never_called)
    assert await off.principal(None) is ANONYMOUS


@pytest.mark.parametrize(
    "values",
    [
        {"auth_required": 1},  # no key
        {"jwt_secret": SECRET, "jwks_url": "http://127.0.0.1/jwks"},  # two families
        {"jwt_secret": SECRET, "jwt_algorithms": "HS256,RS256"},  # mixed allow-list
        {"jwks_url": "http://127.0.0.1/jwks", "jwt_algorithms": "HS256"},  # HS with public keys
        {"jwt_secret": "short"},  # a guessable secret
        {"jwt_secret": SECRET, "jwt_leeway_seconds": 120},
    ],
)
def test_settings_that_cannot_be_safe_stop_the_worker(values: dict[str, Any]) -> None:
    from app.errors import SettingsError

    with pytest.raises(SettingsError):
        _settings(**values)
