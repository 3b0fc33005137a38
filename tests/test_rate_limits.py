"""Abuse limits on real workers: rate limits shared through Redis (GCRA), WebSocket message limits, the
WebSocket Origin check and the streams a tenant may hold.

The rate assertions are invariants, not timings: however slow the machine, no more requests are allowed
than the burst plus the rate times the time that passed (by Redis's clock, read around the run).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from app import redis_client
from deploy.localstack.redis_server import RedisServer
from tests.support.client import ws_frames
from tests.support.isolation import Isolated
from tests.support.private import private_redis
from tests.support.worker import Worker, running, running_pair

SECRET = "rate-limit-test-secret-of-32-bytes!!"
RATE = 2.0
BURST = 5


def token(subject: str, tenant: str = "acme") -> str:
    now = int(time.time())
    return jwt.encode({"sub": subject, "tenant": tenant, "iat": now, "exp": now + 600}, SECRET)


@pytest.fixture(scope="module")
async def pair(iso_module: Isolated, artifacts: Path) -> AsyncIterator[tuple[Worker, Worker]]:
    env = iso_module.env(
        SOMA_AUTH_REQUIRED="1",
        SOMA_JWT_SECRET=SECRET,
        SOMA_RATE_LIMIT_PER_SECOND=str(RATE),
        SOMA_RATE_LIMIT_BURST=str(BURST),
        SOMA_WS_ALLOWED_ORIGINS="https://app.example.com",
        SOMA_STREAMS_PER_TENANT="2",
    )
    async with running_pair(env, artifacts / "logs", f"limits-{iso_module.tag}") as workers:
        yield workers


async def get(worker: Worker, path: str, bearer: str | None = None) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with aiohttp.ClientSession() as http, http.get(worker.url + path, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def redis_now(iso: Isolated) -> float:
    client = redis_client.connect(iso.settings.redis_url)
    try:
        seconds, micros = await client.time()
        return seconds + micros / 1e6
    finally:
        await client.aclose()


async def test_two_workers_share_one_limit_and_it_recovers_at_its_rate(
    pair: tuple[Worker, Worker], iso_module: Isolated
) -> None:
    bearer = token(f"burst-{uuid.uuid4().hex[:6]}")
    began = await redis_now(iso_module)
    answers = [await get(pair[n % 2], "/v1/session/none", bearer) for n in range(BURST + 3)]
    statuses = [status for status, _, _ in answers]
    # the burst passes (404: no such session) on both workers together, then 429
    assert statuses[:BURST] == [404] * BURST, statuses
    assert 429 in statuses[BURST:], statuses
    status, headers, body = next(a for a in answers if a[0] == 429)
    assert body["error"]["code"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 2
    assert headers["RateLimit-Policy"] == f'"caller";q={BURST};w=3'
    assert headers["RateLimit"].startswith('"caller";r=0;t=')
    allowed = answers[0][1]
    assert allowed["RateLimit-Policy"] == f'"caller";q={BURST};w=3'
    assert allowed["RateLimit"].startswith(f'"caller";r={BURST - 1};t=')

    # recovery: keep asking for a while; whatever the machine's speed, never more than the rate allows
    passed = sum(1 for s in statuses if s == 404)
    deadline = time.monotonic() + 60
    while passed < BURST + 4:
        assert time.monotonic() < deadline, "the limit did not recover"
        status, _, _ = await get(pair[passed % 2], "/v1/session/none", bearer)
        passed += status == 404
        await asyncio.sleep(0.05)
    elapsed = await redis_now(iso_module) - began
    assert passed <= BURST + RATE * elapsed + 1, (passed, elapsed)
    # another caller has its own limit
    assert (await get(pair[0], "/v1/session/none", token("someone-else")))[0] == 404


async def test_websocket_messages_are_limited_and_an_abuser_is_closed(pair: tuple[Worker, Worker]) -> None:
    bearer = token(f"ws-{uuid.uuid4().hex[:6]}")
    session = f"wsl-{uuid.uuid4().hex[:8]}"
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{pair[0].url}/v1/session/{session}/stream", headers={"Authorization": f"Bearer {bearer}"}
        ) as ws,
    ):
        (recovered,) = await ws_frames(ws, 1)
        assert recovered["type"] == "recovered"
        # the handshake took one request of the burst; the rest of it are messages
        for n in range(BURST - 1):
            await ws.send_json({"message": f"m{n}", "ref": n})
        replies: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while not any(r.get("code") == "rate_limited" for r in replies):
            await ws.send_json({"message": "more", "ref": "more"})
            message = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            assert message.type == aiohttp.WSMsgType.TEXT, message
            replies.append(message.json())
        refused = next(r for r in replies if r.get("code") == "rate_limited")
        assert refused["type"] == "error" and refused["retry_after"] >= 1
        # going on regardless: after ten refusals in a row the socket is closed with 1008
        for _ in range(12):
            await ws.send_json({"message": "flood"})
        while True:
            message = await ws.receive(timeout=30)
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
        assert ws.close_code == 1008


async def test_websocket_origins_are_checked(pair: tuple[Worker, Worker]) -> None:
    worker = pair[1]
    headers = {"Authorization": f"Bearer {token(f'origin-{uuid.uuid4().hex[:6]}')}"}
    url = f"{worker.url}/v1/session/origin-{uuid.uuid4().hex[:6]}/stream"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers={**headers, "Origin": "https://evil.example"})
        assert refused.value.status == 403
        for origin in ("https://app.example.com", worker.url):  # allowed, and the worker's own
            async with http.ws_connect(url, headers={**headers, "Origin": origin}) as ws:
                assert (await ws_frames(ws, 1))[0]["type"] == "recovered"
        async with http.ws_connect(url, headers=headers) as ws:  # no Origin: not a browser
            assert (await ws_frames(ws, 1))[0]["type"] == "recovered"


async def test_a_tenant_holds_at_most_its_streams(pair: tuple[Worker, Worker]) -> None:
    worker = pair[0]
    tenant = f"streams-{uuid.uuid4().hex[:6]}"
    tokens = [token(f"s{n}", tenant) for n in range(3)]
    async with aiohttp.ClientSession() as http:
        url = f"{worker.url}/v1/session/{tenant}-1/stream"
        first = await http.ws_connect(url, headers={"Authorization": f"Bearer {tokens[0]}"})
        second = await http.ws_connect(url, headers={"Authorization": f"Bearer {tokens[1]}"})
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, headers={"Authorization": f"Bearer {tokens[2]}"})
            assert refused.value.status == 429
        finally:
            await first.close()
        # one closed: room for another (the count drops when the server has ended the stream)
        deadline = time.monotonic() + 30
        while True:
            try:
                third = await http.ws_connect(url, headers={"Authorization": f"Bearer {tokens[2]}"})
                break
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 429 and time.monotonic() < deadline
                await asyncio.sleep(0.1)
        await third.close()
        await second.close()


@pytest.fixture(scope="module")
def redis_server(iso_module: Isolated) -> Iterator[RedisServer]:
    with private_redis(iso_module.settings) as server:
        yield server


@pytest.fixture(scope="module")
async def by_address(iso_module: Isolated, redis_server: RedisServer, artifacts: Path) -> AsyncIterator[Worker]:
    settings = dataclasses.replace(iso_module.settings, redis_url=redis_server.url)
    env = dataclasses.replace(iso_module, settings=settings).env(
        SOMA_AUTH_REQUIRED="1",
        SOMA_JWT_SECRET=SECRET,
        SOMA_RATE_LIMIT_ADDRESS_PER_SECOND="0.5",
        SOMA_RATE_LIMIT_ADDRESS_BURST="4",
        SOMA_REDIS_TIMEOUT_SECONDS="1",
    )
    async with running(env, artifacts / "logs" / f"limits-address-{iso_module.tag}.log") as worker:
        yield worker


async def test_bad_tokens_are_charged_to_their_address_and_limits_fail_open_without_redis(
    by_address: Worker, redis_server: RedisServer
) -> None:
    statuses = [(await get(by_address, "/v1/session/none", "not-a-token"))[0] for _ in range(6)]
    assert statuses[:4] == [401] * 4 and statuses[4:] == [429, 429], statuses
    # Redis away: the limits cannot be read, and requests go through (authentication still applies)
    await off_loop_stop(redis_server)
    try:
        status, _, body = await get(by_address, "/v1/session/none", token("fail-open"))
        assert status == 404, body
        status, _, body = await get(by_address, "/v1/session/none", "not-a-token")
        assert (status, body["error"]["code"]) == (401, "invalid_token")
        _, _, info = await get(by_address, "/v1/worker", token("fail-open"))
        assert info["rate_limits"]["failed_open"] >= 2 and info["rate_limits"]["refused"] >= 2
    finally:
        await asyncio.to_thread(redis_server.up)


async def off_loop_stop(server: RedisServer) -> None:
    await asyncio.to_thread(server.stop)
