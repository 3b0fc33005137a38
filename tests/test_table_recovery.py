"""Session tables in Redis stay exactly the changelog's replay through a SIGKILL, rebalances, a Redis restart."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from deploy.localstack.base import free_port
from tests.support.blocking import off_loop
from tests.support.client import get_json
from tests.support.db import query, wait_rows
from tests.support.events import check_sequenced, message, record
from tests.support.isolation import Isolated
from tests.support.kafka import create_topic, produce, produce_steadily
from tests.support.private import private_redis
from tests.support.tables import assert_last_seq_counts, wait_redis_equals_changelog
from tests.support.worker import Worker

ALL_ROWS = "SELECT * FROM session_events ORDER BY id"
COUNT = "SELECT count(*) AS n FROM session_events"
FROM_REDIS = re.compile(r"table session_state partition \d+: (\d+) keys at changelog offset (\d+) from Redis")


async def assert_tables_match(settings: Settings, events: list[dict[str, Any]]) -> None:
    """Redis holds each table exactly as a full changelog replay computes it; last_seq = the session's events."""
    await wait_redis_equals_changelog(
        settings, "session_state", settings.topic_partitions, holds=lambda state: assert_last_seq_counts(state, events)
    )


def loads_from_redis(worker: Worker) -> list[tuple[int, int]]:
    """(keys, offset) of each session_state partition the worker read from a Redis copy."""
    return [(int(keys), int(offset)) for keys, offset in FROM_REDIS.findall(worker.log(100_000))]


def assert_never_fenced(*workers: Worker) -> None:
    for worker in workers:
        assert "another worker owns it" not in worker.log(100_000), worker.log()


@pytest.fixture
def log_dir(artifacts: Path) -> Path:
    return artifacts / "logs"


async def test_a_worker_killed_mid_stream_recovers_its_tables_from_redis(iso: Isolated, log_dir: Path) -> None:
    settings = iso.settings
    topic = iso.topic("conversation.inbound")
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    events = [message(f"kill-{n % 60}", f"m{n}") for n in range(4_000)]
    await produce(settings.kafka_bootstrap, topic, [record(e) for e in events])
    # small batches and a short write-out interval: many table writes and flushes before the kill
    env = iso.env(SOMA_BATCH_MAX="20", SOMA_TABLE_MIRROR_INTERVAL_SECONDS="0.05")
    first = await Worker(env, log_dir / f"tables-kill-{iso.tag}.log").started()
    await first.wait_http()
    await wait_rows(settings.postgres_dsn, ALL_ROWS, (), 1_000, timeout=60)
    await first.killed()
    stored_at_kill = query(settings.postgres_dsn, COUNT)[0]["n"]
    assert stored_at_kill < len(events), "the kill came after the stream ended: not mid-stream"
    second = await Worker(env, log_dir / f"tables-kill-{iso.tag}-restart.log", port=free_port()).started()
    try:
        await second.wait_http()
        rows = await wait_rows(settings.postgres_dsn, ALL_ROWS, (), len(events), timeout=120)
        check_sequenced(rows, events)
        await assert_tables_match(settings, events)
        loaded = loads_from_redis(second)
        assert loaded and all(keys > 0 for keys, _ in loaded), f"the restart did not start from Redis: {loaded}"
        assert_never_fenced(second)
    finally:
        await second.stopped()


async def test_two_workers_a_third_joins_one_leaves_under_a_steady_stream(iso: Isolated, log_dir: Path) -> None:
    """After each rebalance every produced event is stored once and the tables are the changelog's replay."""
    # six partitions: every rebalance moves some of them
    settings = dataclasses.replace(iso.settings, topic_partitions=6)
    env = dataclasses.replace(iso, settings=settings).env()
    topic = iso.topic("conversation.inbound")
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    workers = [Worker(env, log_dir / f"tables-rebalance-{iso.tag}-{n}.log") for n in range(3)]
    try:
        await workers[0].started()
        await workers[1].started()
        await asyncio.gather(workers[0].wait_http(), workers[1].wait_http())
        await settled(workers[:2], topic, settings.topic_partitions)
        produced: list[dict[str, Any]] = []
        for phase, change in (("join", workers[2].start), ("leave", workers[0].stop)):
            events = [message(f"{phase}-{n % 40}", f"m{n}") for n in range(700)]
            producing = asyncio.create_task(
                produce_steadily(settings.kafka_bootstrap, topic, [record(e) for e in events], 70)
            )
            await asyncio.sleep(3)
            await asyncio.to_thread(change)
            await producing
            produced += events
            rows = await stored_when_quiet(settings.postgres_dsn, len(produced))
            check_stored(rows, produced)
            await assert_tables_match(settings, rows)
        assert any(offset >= 0 for _, offset in loads_from_redis(workers[2])), "the joiner read nothing from Redis"
        assert_never_fenced(*workers)
    finally:
        for worker in workers:
            await worker.stopped()


async def settled(workers: list[Worker], topic: str, partitions: int) -> None:
    """Wait until the group has shared the topic's partitions among ``workers`` (no rebalance pending)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        owned = [await inbound_partitions(worker, topic) for worker in workers]
        if all(owned) and sum(map(len, owned)) == partitions == len(set().union(*owned)):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{topic}: the partitions were never shared among the workers")


async def inbound_partitions(worker: Worker, topic: str) -> set[int]:
    _, info = await get_json(worker.url, "/v1/worker")
    return {int(tp.rsplit("[", 1)[1].rstrip("]")) for tp in info["assigned"] if tp.startswith(topic + "[")}


async def stored_when_quiet(dsn: str, expected: int, timeout: float = 120.0) -> list[dict[str, Any]]:
    """The stored events once all ``expected`` are stored, or once none more arrived for 10 s."""
    deadline = time.monotonic() + timeout
    count, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = query(dsn, COUNT)[0]["n"]
        if now >= expected:
            break
        if now != count:
            count, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since > 10:
            break
        await asyncio.sleep(0.5)
    return query(dsn, ALL_ROWS)


def check_stored(rows: list[dict[str, Any]], produced: list[dict[str, Any]]) -> None:
    """Every produced event stored, each once; each session's seqs run 1..n without gaps."""
    stored = {str(row["event_id"]) for row in rows}
    missing = [(e["session_id"], e["message"], e["event_id"]) for e in produced if e["event_id"] not in stored]
    assert len(rows) == len(produced), f"{len(rows)} of {len(produced)} events stored; missing {missing[:10]}"
    assert len(stored) == len(rows), "an event was stored twice"
    assert stored <= {event["event_id"] for event in produced}, "a stored event was never produced"
    seqs: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        seqs[row["session_id"]].append(row["seq"])
    assert all(sorted(each) == list(range(1, len(each) + 1)) for each in seqs.values()), "a session's seqs have gaps"


async def test_redis_restarted_empty_mid_stream_pauses_then_loses_nothing(
    iso: Isolated, stack: Settings, log_dir: Path
) -> None:
    async with off_loop(private_redis(stack)) as redis_server:
        settings = dataclasses.replace(iso.settings, redis_url=redis_server.url)
        worker = Worker(dataclasses.replace(iso, settings=settings).env(), log_dir / f"tables-redis-{iso.tag}.log")
        await worker.started()
        try:
            await worker.wait_http()
            topic = iso.topic("conversation.inbound")
            events = [message(f"r-{n % 30}", f"m{n}") for n in range(1_200)]
            producing = asyncio.create_task(
                produce_steadily(settings.kafka_bootstrap, topic, [record(e) for e in events], 80)
            )
            await wait_rows(settings.postgres_dsn, ALL_ROWS, (), 150)
            assert await asyncio.to_thread(redis_server.stop)
            # the worst case: Redis comes back without its data (no AOF, no RDB)
            await asyncio.to_thread(shutil.rmtree, redis_server.home / "appendonlydir", ignore_errors=True)
            await asyncio.to_thread((redis_server.home / "dump.rdb").unlink, missing_ok=True)
            await asyncio.sleep(3)
            paused_at = query(settings.postgres_dsn, COUNT)[0]["n"]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                assert worker.proc is not None and worker.proc.poll() is None, worker.log()
                await asyncio.sleep(0.5)
            assert query(settings.postgres_dsn, COUNT)[0]["n"] == paused_at, "processing went on without Redis"
            assert paused_at < len(events), "the outage came after the stream ended: not mid-stream"
            assert await asyncio.to_thread(redis_server.up) == "started"
            await producing
            rows = await wait_rows(settings.postgres_dsn, ALL_ROWS, (), len(events), timeout=120)
            check_sequenced(rows, events)
            await assert_tables_match(settings, events)
            log = worker.log(100_000)
            assert "writing to Redis failed" in log and "writing to Redis resumed" in log
            # a lost connection is one line, no stack trace after it
            lines = log.splitlines()
            failed = next(n for n, line in enumerate(lines) if "writing to Redis failed" in line)
            assert re.search(r"\((ConnectionError|TimeoutError): ", lines[failed]), lines[failed]
            assert not lines[failed + 1].startswith("Traceback"), lines[failed : failed + 3]
            # the empty Redis was noticed and the partitions written whole again (a failed flush during the
            # outage already schedules the rewrite; a flush after it finds the copy lost): either way, a rewrite
            assert re.search(r"partition \d+: rewrote \d+ keys at offset \d+", log), "the lost copy was never rewritten"
        finally:
            await worker.stopped()
