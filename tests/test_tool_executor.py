"""The tool executor on the real broker: each request runs once and its result is sequenced into the session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from agents.tool_requests import all_finished, result_id
from deploy.localstack.base import free_port
from tests.support.db import query, wait_rows
from tests.support.events import record, tool_request
from tests.support.isolation import Isolated
from tests.support.kafka import create_topic, produce, read_topic
from tests.support.worker import Worker, running

# the test's HTTP server is on loopback, on a port of its own
LOOPBACK_FETCH = {"SOMA_HTTP_FETCH_ALLOW_PRIVATE": "1", "SOMA_HTTP_FETCH_PORTS": "*"}
RESULTS = "SELECT * FROM session_events WHERE type = 'tool.result' ORDER BY id"


class LoopbackServer:
    """A real HTTP server on loopback for ``http_fetch``: a page, an endpoint slower than the tool may wait, and
    one that counts its calls and answers none of them until released."""

    def __init__(self) -> None:
        self.url = ""
        self.held_calls = 0
        self.release = asyncio.Event()

    async def page(self, _: web.Request) -> web.Response:
        return web.Response(text="hello from the test server", content_type="text/plain")

    async def slow(self, _: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="too late")

    async def held(self, _: web.Request) -> web.Response:
        self.held_calls += 1
        await self.release.wait()
        return web.Response(text="released")


@pytest.fixture
async def loopback() -> AsyncIterator[LoopbackServer]:
    server = LoopbackServer()
    app = web.Application()
    app.add_routes([web.get("/page", server.page), web.get("/slow", server.slow), web.get("/held", server.held)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.url = f"http://127.0.0.1:{port}"
    yield server
    server.release.set()
    await runner.cleanup()


@pytest.fixture
def http_server(loopback: LoopbackServer) -> str:
    return loopback.url


@pytest.fixture
async def worker(iso: Isolated, artifacts: Path) -> AsyncIterator[Worker]:
    env = iso.env(SOMA_HTTP_FETCH_ALLOWLIST="127.0.0.1", SOMA_TOOL_TIMEOUTS="http_fetch=0.5", **LOOPBACK_FETCH)
    async with running(env, artifacts / "logs" / f"tools-{iso.tag}.log") as worker:
        yield worker


async def test_each_built_in_tool_round_trips_through_kafka_and_postgres(
    iso: Isolated, worker: Worker, http_server: str
) -> None:
    settings = iso.settings
    requests = [
        tool_request("tools-1", "echo", {"text": "ping"}),
        tool_request("tools-1", "timestamp", {}),
        tool_request("tools-1", "http_fetch", {"url": f"{http_server}/page"}),
        tool_request("tools-1", "no_such_tool", {}),
        tool_request("tools-1", "http_fetch", {"url": f"{http_server}/slow"}),
        tool_request("tools-1", "http_fetch", {"url": "http://example.com/"}),
    ]
    topic = iso.topic("tool.requests")
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    before = datetime.now(UTC)
    await produce(settings.kafka_bootstrap, topic, [record(r, "tool_request") for r in requests])

    rows = await wait_rows(settings.postgres_dsn, RESULTS, (), len(requests), timeout=60)
    results = {row["payload"]["request_id"]: row["payload"] for row in rows}
    assert set(results) == {r["event_id"] for r in requests}
    echo, stamp, page, unknown, slow, denied = (results[r["event_id"]] for r in requests)

    assert (echo["status"], echo["payload"]) == ("ok", {"echo": {"text": "ping"}})
    assert stamp["status"] == "ok"
    assert before <= datetime.fromisoformat(stamp["payload"]["iso"]) <= datetime.now(UTC)
    assert page["status"] == "ok" and page["payload"]["status"] == 200
    assert page["payload"]["body"] == "hello from the test server"
    assert (unknown["status"], unknown["payload"]["error"]["code"]) == ("error", "unknown_tool")
    assert (slow["status"], slow["payload"]["error"]["code"]) == ("timeout", "timeout")
    assert 0.5 <= slow["execution_time"] < 3
    assert (denied["status"], denied["payload"]["error"]["code"]) == ("error", "host_not_allowed")
    for request in requests:
        result = results[request["event_id"]]
        assert result["event_id"] == result_id(request["event_id"])
        assert result["tool_name"] == request["tool_name"]

    # requests and results are all events of the session, with one gap-free sequence
    session = query(
        settings.postgres_dsn, "SELECT seq, type FROM session_events WHERE session_id = 'tools-1' ORDER BY seq"
    )
    assert [row["seq"] for row in session] == list(range(1, 2 * len(requests) + 1))
    assert sorted(row["type"] for row in session) == ["tool.request"] * 6 + ["tool.result"] * 6
    # the results went through the real tool.results topic, keyed by session
    on_topic = await read_topic(settings.kafka_bootstrap, iso.topic("tool.results"), expect=len(requests))
    assert {r.key for r in on_topic} == {b"tools-1"}


async def test_a_replayed_request_does_not_run_its_tool_again(iso: Isolated, worker: Worker) -> None:
    settings = iso.settings
    topic = iso.topic("tool.requests")
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    request = tool_request("tools-2", "echo", {"n": 1})
    await produce(settings.kafka_bootstrap, topic, [record(request, "tool_request")])
    await wait_rows(settings.postgres_dsn, RESULTS, (), 1)
    sentinel = tool_request("tools-2", "echo", {"n": 2})
    await produce(settings.kafka_bootstrap, topic, [record(request, "tool_request"), record(sentinel, "tool_request")])
    rows = await wait_rows(settings.postgres_dsn, RESULTS, (), 2)
    assert [row["payload"]["request_id"] for row in rows] == [request["event_id"], sentinel["event_id"]]
    on_topic = await read_topic(settings.kafka_bootstrap, iso.topic("tool.results"), expect=2)
    assert len(on_topic) == 2, "the replayed request published no second result"


async def test_a_tool_interrupted_by_a_crash_is_answered_interrupted_and_never_run_twice(
    iso: Isolated, loopback: LoopbackServer, artifacts: Path
) -> None:
    settings = iso.settings
    env = iso.env(SOMA_HTTP_FETCH_ALLOWLIST="127.0.0.1", SOMA_TOOL_TIMEOUTS="http_fetch=120", **LOOPBACK_FETCH)
    topic = iso.topic("tool.requests")
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    request = tool_request("tools-3", "http_fetch", {"url": f"{loopback.url}/held"})
    first = await Worker(env, artifacts / "logs" / f"tools-crash-{iso.tag}.log").started()
    try:
        await first.wait_http()
        await produce(settings.kafka_bootstrap, topic, [record(request, "tool_request")])
        deadline = time.monotonic() + 60
        while loopback.held_calls == 0:  # the tool is running: its request was stored and marked started
            assert time.monotonic() < deadline, first.log()
            await asyncio.sleep(0.05)
    finally:
        await first.killed()  # SIGKILL: the request is neither answered nor acknowledged
    async with running(env, artifacts / "logs" / f"tools-crash-restart-{iso.tag}.log") as second:
        rows = await wait_rows(settings.postgres_dsn, RESULTS, (), 1, timeout=90)
        result = rows[0]["payload"]
        assert result["request_id"] == request["event_id"], second.log()
        assert (result["status"], result["payload"]["error"]["code"]) == ("error", "interrupted"), result
        assert loopback.held_calls == 1, "the restarted worker ran the tool again"
        # one request, one result in the session; the request was stored once
        types = query(
            settings.postgres_dsn, "SELECT type FROM session_events WHERE session_id = 'tools-3' ORDER BY seq"
        )
        assert [row["type"] for row in types] == ["tool.request", "tool.result"]


async def test_a_failing_call_lets_its_siblings_finish_before_the_batch_fails() -> None:
    """The executor's batch policy (agents/tool_requests.all_finished): siblings of a failed call run to their end,
    so none is cut off mid-run and answered ``interrupted`` on the retry although its tool ran."""
    finished: list[str] = []
    release = asyncio.Event()

    async def fails() -> None:
        raise RuntimeError("the first call failed")

    async def slow_sibling() -> None:
        await release.wait()
        finished.append("slow")

    async def quick_sibling() -> None:
        finished.append("quick")
        release.set()

    with pytest.raises(RuntimeError, match="the first call failed"):
        await all_finished([fails(), slow_sibling(), quick_sibling()])
    assert finished == ["quick", "slow"]
