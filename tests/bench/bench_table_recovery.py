"""A 1,000,000-key session_state: time to resume processing from its Redis copy vs a full changelog replay."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from datetime import datetime
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from app.settings import Settings
from tables.redis_keys import TableKeys
from tests.support.isolation import Isolated
from tests.support.kafka import create_topic
from tests.support.tables import changelog_topic
from tests.support.worker import Worker

KEYS = 1_000_000
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


async def fill_changelog(bootstrap: str, topic: str, partitions: int) -> float:
    """Write KEYS session_state records straight into the table's changelog, as a long history would."""
    await create_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    began = time.perf_counter()
    try:
        for start in range(0, KEYS, 20_000):
            sends = []
            for n in range(start, start + 20_000):
                value = {"last_seq": n % 100 + 1, "last_activity": "2026-01-01T00:00:00+00:00", "persona_id": None}
                key = json.dumps(f"s-{n}").encode()
                sends.append(await producer.send(topic, json.dumps(value).encode(), key=key, partition=n % partitions))
            await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return time.perf_counter() - began


async def keys_in_redis(settings: Settings, partitions: int) -> int:
    """Keys of session_state's complete Redis copies (a partition counts once its offset is written)."""
    layout = TableKeys(settings.redis_prefix, settings.app_id, "session_state")
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        total = 0
        for partition in range(partitions):
            offset, size = await client.hmget(layout.partition(partition).meta, ["offset", "size"])
            total += int(size) if offset is not None and size is not None else 0
        return total
    finally:
        await client.aclose()


def stamp(line: str) -> float:
    found = STAMP.match(line)
    assert found is not None, line
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def recovery_seconds(log: str) -> float:
    """Partition assignment to "Worker ready" (table recovery included), from the worker's log."""
    lines = log.splitlines()
    assigned = next(line for line in lines if "Executing _on_partitions_assigned" in line)
    ready = next(line for line in lines if "Worker ready" in line and stamp(line) >= stamp(assigned))
    return stamp(ready) - stamp(assigned)


async def resume(iso: Isolated, store: str, log_path: Path) -> tuple[Worker, float, float]:
    """Start a worker: seconds until it resumes processing ("Worker ready"), and of those, table recovery."""
    settings = dataclasses.replace(iso.settings, table_store=store)
    worker = Worker(dataclasses.replace(iso, settings=settings).env(), log_path)
    began = time.time()
    worker.start()
    while "Worker ready" not in (log := worker.log(1_000_000)):
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        assert time.time() - began < 1200, "the worker did not resume within 1200 s"
        await asyncio.sleep(0.2)
    ready = next(line for line in log.splitlines() if "Worker ready" in line)
    return worker, stamp(ready) - began, recovery_seconds(log)


async def test_recovery_of_a_million_keys_from_redis_vs_changelog_replay(iso: Isolated, artifacts: Path) -> None:
    settings = iso.settings
    partitions = settings.topic_partitions
    topic = changelog_topic(settings, "session_state")
    await create_topic(settings.kafka_bootstrap, iso.topic("conversation.inbound"), partitions)
    filled = await fill_changelog(settings.kafka_bootstrap, topic, partitions)
    logs = artifacts / "logs"

    memory, memory_total, memory_recovery = await resume(
        iso, "memory://", logs / f"bench-recovery-{iso.tag}-memory.log"
    )
    memory.stop()
    replay, replay_total, replay_recovery = await resume(iso, "redis://", logs / f"bench-recovery-{iso.tag}-replay.log")
    # the first run writes its copy to Redis behind; wait until it is complete, then restart from it
    began = time.perf_counter()
    while await keys_in_redis(settings, partitions) < KEYS:
        await asyncio.sleep(0.2)
    copy_written = time.perf_counter() - began
    replay.stop()
    warm, warm_total, warm_recovery = await resume(iso, "redis://", logs / f"bench-recovery-{iso.tag}-redis.log")
    warm.stop()
    loads = re.findall(
        r"session_state partition \d+: (\d+) keys at changelog offset \d+ from Redis in ([\d.]+) s", warm.log(1_000_000)
    )

    print(f"\n{KEYS:,} keys in session_state ({partitions} partitions); changelog written in {filled:.1f} s")
    print("  time to resume processing: worker start -> 'Worker ready' | of which table recovery: assigned -> ready")
    print(f"  full changelog replay, memory://          {memory_total:6.1f} s | {memory_recovery:6.1f} s")
    print(f"  full changelog replay, redis:// (empty)   {replay_total:6.1f} s | {replay_recovery:6.1f} s")
    print(f"  from the Redis copy, redis://             {warm_total:6.1f} s | {warm_recovery:6.1f} s")
    print(f"  Redis copy of the replayed table complete {copy_written:6.1f} s after the replay run resumed")
    print(f"  partitions read from Redis (keys, seconds): {loads}")
