"""``/health`` checks Kafka, Redis and Postgres for real: 503 naming what is down, 200 once it is back.
``/health/live`` (the Helm chart's liveness probe) stays 200 meanwhile: a dependency away is no reason to restart."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy.localstack.base import Component
from deploy.localstack.postgres_server import PostgresServer
from deploy.localstack.redis_server import RedisServer
from tests.support.client import get_json
from tests.support.isolation import Isolated
from tests.support.private import private_postgres, private_redis
from tests.support.worker import Worker, running


@pytest.fixture(scope="module")
def servers(iso_module: Isolated) -> Iterator[tuple[RedisServer, PostgresServer]]:
    with private_redis(iso_module.settings) as redis, private_postgres(iso_module.settings) as postgres:
        yield redis, postgres


@pytest.fixture(scope="module")
async def worker(
    iso_module: Isolated, servers: tuple[RedisServer, PostgresServer], artifacts: Path
) -> AsyncIterator[Worker]:
    redis, postgres = servers
    settings = dataclasses.replace(
        iso_module.settings, redis_url=redis.url, postgres_dsn=postgres.dsn, health_timeout_seconds=1.0
    )
    env = dataclasses.replace(iso_module, settings=settings).env()
    worker = await Worker(env, artifacts / "logs" / f"health-{iso_module.tag}.log").started()
    await worker.wait_http()
    yield worker
    await worker.stopped()


async def health(worker: Worker) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(worker.url + "/health") as resp:
        return resp.status, await resp.json()


async def live(worker: Worker) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(worker.url + "/health/live") as resp:
        return resp.status, await resp.json()


async def wait_health(
    worker: Worker, accept: Callable[[int, dict[str, Any]], bool], timeout: float = 30.0
) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    status, body = await health(worker)
    while not accept(status, body) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        status, body = await health(worker)
    assert accept(status, body), (status, body)
    return status, body


async def test_all_up_is_200_ok(worker: Worker) -> None:
    _, body = await wait_health(worker, lambda s, b: s == 200)
    assert body["status"] == "ok"
    assert set(body["components"]) == {"kafka", "redis", "postgres"}
    assert all(c["status"] == "ok" for c in body["components"].values())
    assert body["components"]["kafka"]["brokers"] >= 1
    assert await live(worker) == (200, {"status": "alive"})


@pytest.mark.parametrize("name", ["redis", "postgres"])
async def test_a_stopped_component_is_503_named_then_recovers_without_restart(
    worker: Worker, servers: tuple[RedisServer, PostgresServer], name: str
) -> None:
    component: Component = {"redis": servers[0], "postgres": servers[1]}[name]
    pid = worker.pid
    await wait_health(worker, lambda s, b: s == 200)
    assert await asyncio.to_thread(component.stop)
    _, body = await wait_health(worker, lambda s, b: s == 503)
    assert body["status"] == "degraded"
    assert body["failing"] == [name]
    assert body["components"][name]["status"] == "down"
    assert body["components"][name]["error"]
    others = {k: v["status"] for k, v in body["components"].items() if k != name}
    assert set(others.values()) == {"ok"}
    # the liveness probe does not restart a worker for it (readiness, /health, takes it out of the Service)
    assert await live(worker) == (200, {"status": "alive"})

    assert await asyncio.to_thread(component.up) == "started"
    _, body = await wait_health(worker, lambda s, b: s == 200)
    assert body["status"] == "ok"
    assert worker.pid == pid and worker.proc is not None and worker.proc.poll() is None


async def test_a_worker_starts_when_its_data_dir_does_not_exist_yet(iso: Isolated, artifacts: Path) -> None:
    """A second clone beside servers started by another has no .stack/ yet: its worker makes the directories."""
    data_dir = iso.settings.data_dir / "second-clone" / ".stack" / "faust"
    assert not await asyncio.to_thread(data_dir.parent.exists)
    env = iso.env(SOMA_DATA_DIR=str(data_dir))
    async with running(env, artifacts / "logs" / f"health-datadir-{iso.tag}.log") as worker:
        status, health = await get_json(worker.url, "/health")
    assert (status, health["status"]) == (200, "ok")
    assert await asyncio.to_thread(data_dir.is_dir)
