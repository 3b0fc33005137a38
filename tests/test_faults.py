"""Nothing lost under faults: Postgres down for 20 s, the broker restarted, the worker SIGKILLed."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.settings import Settings
from deploy.localstack.base import free_port
from deploy.localstack.kafka_broker import KafkaBroker
from tests.support import private
from tests.support.blocking import off_loop
from tests.support.client import get_json
from tests.support.db import query, wait_rows
from tests.support.events import check_sequenced, message, record
from tests.support.isolation import Isolated
from tests.support.kafka import create_topic, end_offsets, produce, produce_steadily
from tests.support.private import private_postgres
from tests.support.worker import Worker
from tools import migrate

ALL_ROWS = "SELECT * FROM session_events ORDER BY id"
STREAM_ROWS = "SELECT * FROM session_events WHERE session_id <> 'shed-1' ORDER BY id"
DLQS = ("conversation.inbound.dlq",)


async def hold(seconds: float, worker: Worker) -> None:
    """Let an outage last ``seconds``, checking all along that the worker stays up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        await asyncio.sleep(0.5)


async def assert_no_dead_letters(iso: Isolated) -> None:
    for name in DLQS:
        assert await end_offsets(iso.settings.kafka_bootstrap, iso.topic(name)) == 0


@pytest.fixture
async def worker_log(artifacts: Path, iso: Isolated) -> Path:
    return artifacts / "logs" / f"faults-{iso.tag}.log"


async def test_postgres_stopped_for_20_s_mid_stream_loses_nothing(
    iso: Isolated, stack: Settings, worker_log: Path
) -> None:
    async with off_loop(private_postgres(stack)) as postgres:
        await asyncio.to_thread(migrate.apply, postgres.dsn)
        settings = dataclasses.replace(iso.settings, postgres_dsn=postgres.dsn)
        worker = await Worker(dataclasses.replace(iso, settings=settings).env(), worker_log).started()
        try:
            await worker.wait_http()
            topic = iso.topic("conversation.inbound")
            events = [message(f"pg-{n % 30}", f"m{n}") for n in range(1_500)]
            producing = asyncio.create_task(
                produce_steadily(settings.kafka_bootstrap, topic, [record(e) for e in events], 75)
            )
            await wait_rows(postgres.dsn, ALL_ROWS, (), 50)
            assert await asyncio.to_thread(postgres.stop)
            await hold(20, worker)
            assert await asyncio.to_thread(postgres.up) == "started"
            await producing
            rows = await wait_rows(postgres.dsn, ALL_ROWS, (), len(events), timeout=120)
            check_sequenced(rows, events)
            await assert_no_dead_letters(iso)
            assert "transient failure" in worker.log(100_000)
        finally:
            await worker.stopped()


@pytest.fixture
def private_kafka(stack: Settings) -> Iterator[KafkaBroker]:
    with private.private_kafka(stack) as broker:
        yield broker


async def test_the_broker_restarted_mid_stream_loses_nothing(
    iso: Isolated, private_kafka: KafkaBroker, worker_log: Path
) -> None:
    settings = dataclasses.replace(
        iso.settings,
        kafka_bootstrap=private_kafka.bootstrap,
        max_inflight_publishes=2,
        kafka_publish_timeout_seconds=2.0,
    )
    worker = await Worker(dataclasses.replace(iso, settings=settings).env(), worker_log).started()
    try:
        await worker.wait_http()
        topic = iso.topic("conversation.inbound")
        await create_topic(private_kafka.bootstrap, topic, settings.topic_partitions)
        events = [message(f"k-{n % 20}", f"m{n}") for n in range(1_500)]
        producing = asyncio.create_task(
            produce_steadily(private_kafka.bootstrap, topic, [record(e) for e in events], 100)
        )
        await wait_rows(settings.postgres_dsn, ALL_ROWS, (), 200)
        assert await asyncio.to_thread(private_kafka.stop)
        stored_while_down = len(query(settings.postgres_dsn, ALL_ROWS))
        await sheds_load_while_the_broker_is_away(worker)
        assert await asyncio.to_thread(private_kafka.up) == "started"
        await producing
        # wait for the stream's own rows: the shed POSTs' rows (0 to 2) must not make up for a missing one
        await wait_rows(settings.postgres_dsn, STREAM_ROWS, (), len(events), timeout=180)
        rows = query(settings.postgres_dsn, ALL_ROWS)
        assert stored_while_down < len(events), "the restart came after the stream ended: not mid-stream"
        # the refused POST never reaches the store; the two answered enqueue_failed were in aiokafka's batch
        # when the broker went away and may arrive once it is back (at most once each: their event ids)
        shed = sorted(r["payload"]["message"] for r in rows if r["session_id"] == "shed-1")
        assert set(shed) <= {"waiting 0", "waiting 1"} and len(shed) == len(set(shed)), shed
        check_sequenced([r for r in rows if r["session_id"] != "shed-1"], events)
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        await worker.stopped()


async def sheds_load_while_the_broker_is_away(worker: Worker) -> None:
    """Two POSTs wait for the broker (SOMA_MAX_INFLIGHT_PUBLISHES=2): a third is refused at once, with Retry-After.

    None of the three is accepted: the waiting two end in 503 enqueue_failed after the publish timeout.
    """
    async with aiohttp.ClientSession() as http:

        async def post(text: str) -> tuple[int, dict[str, Any], str | None]:
            body = {"session_id": "shed-1", "message": text}
            async with http.post(worker.url + "/v1/session/message", json=body) as resp:
                return resp.status, await resp.json(), resp.headers.get("Retry-After")

        waiting = [asyncio.create_task(post(f"waiting {n}")) for n in range(2)]
        deadline = time.monotonic() + 30
        while (await get_json(worker.url, "/v1/worker"))[1]["publishes_in_flight"] < 2:
            assert time.monotonic() < deadline, "the two POSTs never waited for the broker"
            await asyncio.sleep(0.05)
        status, refused, retry_after = await post("one too many")
        assert (status, refused["error"]["code"], retry_after) == (503, "overloaded", "1")
        for status, answer, _ in await asyncio.gather(*waiting):
            assert (status, answer["error"]["code"]) == (503, "enqueue_failed")


async def test_a_worker_killed_mid_stream_and_restarted_stores_everything_once(iso: Isolated, worker_log: Path) -> None:
    settings = iso.settings
    topic = iso.topic("conversation.inbound")
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    events = [message(f"kill-{n % 50}", f"m{n}") for n in range(10_000)]
    await produce(settings.kafka_bootstrap, topic, [record(e) for e in events])
    env = iso.env(SOMA_BATCH_MAX="100")
    first = await Worker(env, worker_log).started()
    await first.wait_http()
    await wait_rows(settings.postgres_dsn, ALL_ROWS, (), 1_000, timeout=60)
    await first.killed()
    stored_at_kill = query(settings.postgres_dsn, "SELECT count(*) AS n FROM session_events")[0]["n"]
    assert stored_at_kill < len(events), "the kill came after the stream ended: not mid-stream"
    second = await Worker(env, worker_log.with_name(worker_log.stem + "-restart.log"), port=free_port()).started()
    try:
        await second.wait_http()
        rows = await wait_rows(settings.postgres_dsn, ALL_ROWS, (), len(events), timeout=120)
        check_sequenced(rows, events)
        await assert_no_dead_letters(iso)
    finally:
        await second.stopped()


async def test_reads_answer_503_with_retry_after_while_postgres_is_down(
    iso: Isolated, stack: Settings, worker_log: Path
) -> None:
    """Session reads and stream opening wait SOMA_READ_DEADLINE_SECONDS for PostgreSQL, never forever."""
    async with off_loop(private_postgres(stack)) as postgres:
        await asyncio.to_thread(migrate.apply, postgres.dsn)
        settings = dataclasses.replace(iso.settings, postgres_dsn=postgres.dsn, read_deadline_seconds=1.0)
        worker = await Worker(dataclasses.replace(iso, settings=settings).env(), worker_log).started()
        session = f"reads-{iso.tag}"
        try:
            await worker.wait_http()
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    worker.url + "/v1/session/message", json={"session_id": session, "message": "hi"}
                ) as resp:
                    assert resp.status == 202
                await wait_rows(postgres.dsn, "SELECT 1 FROM session_events", (), 1)
                assert await asyncio.to_thread(postgres.stop)
                for path, headers in (
                    # a session the session table does not hold (one it holds is answered from it, marked stale:
                    # tests/test_session_table.py)
                    (f"/v1/session/never-{iso.tag}", {}),
                    (f"/v1/session/{session}/events?after=0", {}),
                    (f"/v1/session/{session}/events", {"Accept": "text/event-stream"}),
                ):
                    async with http.get(worker.url + path, headers=headers) as resp:
                        body = await resp.json()
                        assert (resp.status, body["error"]["code"]) == (503, "storage_unavailable"), path
                        assert resp.headers["Retry-After"] == "5"
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(f"{worker.url}/v1/session/{session}/stream")
                assert refused.value.status == 503
                assert await asyncio.to_thread(postgres.up) == "started"
                deadline = time.monotonic() + 60
                while True:
                    async with http.get(f"{worker.url}/v1/session/{session}") as resp:
                        if resp.status == 200:
                            assert (await resp.json())["last_seq"] == 1
                            break
                    assert time.monotonic() < deadline, "reads did not recover after PostgreSQL came back"
                    await asyncio.sleep(0.2)
        finally:
            await worker.stopped()
