"""Authorization by the real OPA running the project's policy (deploy/opa/): allow, deny, undefined, OPA away.

The policy's own unit tests run with ``opa test``; the service's client is asked against a real OPA; a worker
with authentication and OPA on answers 403 ``policy_denied`` for what the policy refuses and runs no tool the
policy blocks (its result says ``blocked``).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from app.policy import Policy
from app.settings import Settings
from deploy.localstack.go_tools import OPA
from deploy.localstack.opa_server import POLICY_DIR, OpaServer
from tests.support.db import wait_rows
from tests.support.events import record, tool_request
from tests.support.isolation import Isolated
from tests.support.kafka import create_topic, produce
from tests.support.private import private_opa
from tests.support.worker import Worker, running

SECRET = "policy-test-secret-of-32-bytes-or-more"


@pytest.fixture(scope="module")
def opa(stack: Settings) -> Iterator[OpaServer]:
    with private_opa(stack) as server:
        yield server


def token(scope: str, tenant: str = "acme") -> str:
    now = int(time.time())
    return jwt.encode({"sub": "alice", "tenant": tenant, "scope": scope, "iat": now, "exp": now + 600}, SECRET)


def test_the_policy_passes_its_own_unit_tests(stack: Settings) -> None:
    done = subprocess.run(
        [str(OPA.require(stack.cache_dir)), "test", "-v", str(POLICY_DIR)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and "PASS:" in done.stdout, done.stdout


async def test_the_client_allows_denies_and_fails_closed(opa: OpaServer) -> None:
    async with aiohttp.ClientSession() as http:
        policy = Policy(opa.url, timeout_seconds=2.0, cache_seconds=0, http=lambda: http)
        read = {"request": {"method": "GET", "path": "/v1/session/s1", "headers": {}}, "claims": {"tenant": "acme"}}
        allowed = await policy.decide("somastack/allow", read)
        assert allowed.allowed and allowed.decision_id, allowed
        denied = await policy.decide("somastack/allow", {**read, "claims": {}})
        assert not denied.allowed and denied.reason == "the policy denied this request" and denied.decision_id
        undefined = await policy.decide("somastack/no_such_rule", read)
        assert not undefined.allowed and "undefined" in undefined.reason, undefined
        await asyncio.to_thread(opa.stop)
        try:
            began = time.monotonic()
            away = await policy.decide("somastack/allow", read)
            assert not away.allowed and "could not be asked" in away.reason, away
            assert time.monotonic() - began < 10
        finally:
            await asyncio.to_thread(opa.up)
        assert (await policy.decide("somastack/allow", read)).allowed  # back: allowed again
    assert policy.asked == 5 and policy.denied == 3


@pytest.fixture(scope="module")
async def worker(iso_module: Isolated, opa: OpaServer, artifacts: Path) -> AsyncIterator[Worker]:
    env = iso_module.env(
        SOMA_AUTH_REQUIRED="1",
        SOMA_JWT_SECRET=SECRET,
        SOMA_OPA_URL=opa.url,
        SOMA_OPA_CACHE_SECONDS="0",
        SOMA_HTTP_FETCH_ALLOWLIST="127.0.0.1",
    )
    async with running(env, artifacts / "logs" / f"policy-{iso_module.tag}.log") as worker:
        yield worker


async def call(worker: Worker, method: str, path: str, bearer: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, worker.url + path, json=body, headers={"Authorization": f"Bearer {bearer}"}) as resp,
    ):
        return resp.status, await resp.json()


async def test_requests_the_policy_refuses_are_403_and_nothing_is_sent(worker: Worker, opa: OpaServer) -> None:
    session = f"pol-{uuid.uuid4().hex[:8]}"
    message = {"session_id": session, "message": "hello"}
    status, answer = await call(worker, "POST", "/v1/session/message", token("chat"), message)
    assert status == 202, answer
    status, answer = await call(worker, "POST", "/v1/session/message", token("read"), message)
    assert (status, answer["error"]["code"]) == (403, "policy_denied"), answer
    assert "decision " in answer["error"]["message"]  # the decision id, to find it in OPA's decision log
    status, answer = await call(worker, "GET", "/v1/worker", token("chat"))
    assert (status, answer["error"]["code"]) == (403, "policy_denied")
    status, answer = await call(worker, "GET", "/v1/worker", token("admin"))
    assert status == 200, answer
    # the token never reaches OPA: its decision log holds the input without Authorization
    log = await asyncio.to_thread(opa.log_path.read_text)
    assert '"path":"/v1/session/message"' in log.replace(" ", "") and token("read").split(".")[2] not in log
    assert "authorization" not in log.lower()


async def test_a_tool_the_policy_blocks_does_not_run(worker: Worker, iso_module: Isolated) -> None:
    settings = iso_module.settings
    topic = iso_module.topic("tool.requests")
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    metadata = {"tenant": "acme", "subject": "alice", "scope": "chat"}
    allowed = {**tool_request("pol-tools", "echo", {"text": "hi"}), "metadata": metadata}
    blocked = {**tool_request("pol-tools", "http_fetch", {"url": worker.url + "/health"}), "metadata": metadata}
    await produce(settings.kafka_bootstrap, topic, [record(allowed, "tool_request"), record(blocked, "tool_request")])
    rows = await wait_rows(
        settings.postgres_dsn, "SELECT payload FROM session_events WHERE type = 'tool.result' ORDER BY id", (), 2
    )
    results = {row["payload"]["tool_name"]: row["payload"] for row in rows}
    assert results["echo"]["status"] == "ok"
    assert results["http_fetch"]["status"] == "blocked", results["http_fetch"]
    assert results["http_fetch"]["payload"]["error"]["code"] == "policy_denied"
