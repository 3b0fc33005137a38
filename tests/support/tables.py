"""Faust tables as Redis holds them, and as a full replay of their changelog topic computes them."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app import redis_client
from app.settings import Settings
from tables.redis_keys import TableKeys


@dataclass
class PartitionCopy:
    """One partition: the changelog offset its values are complete up to, and the values."""

    offset: int | None
    values: dict[bytes, bytes] = field(default_factory=dict)


async def redis_table(settings: Settings, table: str, partitions: int) -> dict[int, PartitionCopy]:
    """Each partition of ``table`` as Redis holds it (no offset: no usable copy)."""
    layout = TableKeys(settings.redis_prefix, settings.app_id, table)
    client = redis_client.connect(settings.redis_url)
    try:
        copies = {}
        for partition in range(partitions):
            keys = layout.partition(partition)
            offset = await client.hget(keys.meta, "offset")
            values = await client.hgetall(keys.data) if offset is not None else {}
            copies[partition] = PartitionCopy(None if offset is None else int(offset), values)
        return copies
    finally:
        await client.aclose()


async def changelog_table(bootstrap: str, topic: str, partitions: int) -> dict[int, PartitionCopy]:
    """Each partition of a table computed from its whole changelog topic: last record per key wins."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        copies = {tp.partition: PartitionCopy(None) for tp in tps}
        deadline = time.monotonic() + 60
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            assert time.monotonic() < deadline, f"{topic}: could not read up to {end}"
            for tp, records in (await consumer.getmany(timeout_ms=300)).items():
                copy = copies[tp.partition]
                for record in records:
                    copy.offset = record.offset
                    if record.value is None:
                        copy.values.pop(record.key, None)
                    else:
                        copy.values[record.key] = record.value
        return copies
    finally:
        await consumer.stop()


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


async def wait_redis_equals_changelog(
    settings: Settings,
    table: str,
    partitions: int,
    timeout: float = 60.0,
    holds: Callable[[dict[int, PartitionCopy]], None] | None = None,
) -> dict[int, PartitionCopy]:
    """Wait until Redis holds, per partition, exactly the full replay of the changelog, at its last offset.

    ``holds``: an assertion on that content which must pass too (the agents write the session tables out
    every ``SOMA_TABLE_MIRROR_INTERVAL_SECONDS``, so the final values arrive up to that much later).
    """
    deadline = time.monotonic() + timeout
    topic = changelog_topic(settings, table)
    while True:
        expected = await changelog_table(settings.kafka_bootstrap, topic, partitions)
        held = await redis_table(settings, table, partitions)
        if held == expected:
            if holds is None:
                return held
            try:
                holds(held)
                return held
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        elif time.monotonic() > deadline:
            diff = {
                p: (held[p].offset, expected[p].offset, len(held[p].values), len(expected[p].values))
                for p in expected
                if held[p] != expected[p]
            }
            raise AssertionError(
                f"{table}: Redis != changelog; partition: (redis offset, changelog offset, sizes) {diff}"
            )
        await asyncio.sleep(0.5)


def decoded(copies: dict[int, PartitionCopy]) -> dict[Any, Any]:
    """Every partition's values, JSON-decoded, in one mapping (a key lives in one partition)."""
    merged: dict[Any, Any] = {}
    for copy in copies.values():
        for key, value in copy.values.items():
            merged[json.loads(key)] = json.loads(value)
    return merged


def assert_last_seq_counts(copies: dict[int, PartitionCopy], events: list[dict[str, Any]]) -> None:
    """``session_state``: each session's ``last_seq`` is its number of events, no more, no less."""
    counts = Counter(event["session_id"] for event in events)
    state = decoded(copies)
    seqs = {sid: value["last_seq"] for sid, value in state.items()}
    wrong = {sid: (seqs.get(sid), n) for sid, n in counts.items() if seqs.get(sid) != n}
    assert seqs == dict(counts), f"(last_seq, events) of {len(wrong)} sessions: {sorted(wrong.items())[:10]}"
