"""``faust -A app dlq list|show``: the dead letters of the session topics, read straight from Kafka.

``list`` prints one line per dead letter (its place, error class, attempts, origin and a payload preview) or
with ``--format json`` the full ``dead_letter`` document (schemas/dead_letter.schema.json); filters: ``--topic``
(a session topic: its ``.dlq``), ``--error-class`` (a substring of the class name), ``--since`` (ISO 8601 time
of the last failure), ``--limit``. ``show TOPIC PARTITION OFFSET`` prints one dead letter whole, stack trace
included. Redrive is not built yet.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.cli import argument, option

from app import app
from app.topics import SESSION_TOPICS, dead_letter
from ops.base import FAILED, CommandError, OpsCommand
from tools import dead_letters

PREVIEW = 80


def _since(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        found = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--since {raw!r} is not an ISO 8601 time (e.g. 2026-12-02T10:00:00Z)") from None
    return (found if found.tzinfo else found.replace(tzinfo=UTC)).timestamp()


def _topics(topic: str | None) -> list[str]:
    if topic is None:
        return list(SESSION_TOPICS)
    if topic.endswith(".dlq"):
        topic = topic.removesuffix(".dlq")
    if topic not in SESSION_TOPICS:
        raise CommandError(f"unknown topic {topic!r}; one of {', '.join(SESSION_TOPICS)}")
    return [topic]


async def _letters(topics: list[str]) -> AsyncIterator[dict[str, Any]]:
    """Every dead letter of ``topics``' dead-letter topics, from the first to the last at the start of the read."""
    settings = app.settings
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
        **settings.kafka_security(),
    )
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise CommandError(f"cannot reach the broker at {settings.kafka_bootstrap}: {exc}") from None
    try:
        await consumer._client.force_metadata_update()
        partitions = []
        for topic in topics:
            name = settings.topic(dead_letter(topic))
            found = consumer.partitions_for_topic(name)
            partitions += [TopicPartition(name, p) for p in sorted(found or ())]
        if not partitions:
            return
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if end[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < end[tp]:
                        yield dead_letters.view(
                            record.key, record.value, list(record.headers), record.partition, record.offset
                        ) | {"dlq_topic": tp.topic}
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


def _line(doc: dict[str, Any]) -> str:
    failed = datetime.fromtimestamp(doc["last_failure"], UTC).isoformat(timespec="seconds")
    value = (doc["value"] or "").replace("\n", " ")
    preview = value if len(value) <= PREVIEW else value[: PREVIEW - 1] + "…"
    origin = f"{doc['source_topic']}[{doc['source_partition']}]@{doc['source_offset']}"
    place = f"{doc['dlq_topic']}[{doc['dlq_partition']}]@{doc['dlq_offset']}"
    return f"{place}  {failed}  {doc['error_class']}  attempts={doc['attempts']}  from {origin}  {preview}"


@app.command(
    argument("action", type=str),
    argument("where", nargs=-1, type=str),
    option("--topic", default=None, help="a session topic (conversation.inbound, ...): its dead letters only"),
    option("--error-class", default=None, help="only dead letters whose error class contains this"),
    option("--since", default=None, help="only dead letters whose last failure is at or after this ISO 8601 time"),
    option("--limit", type=int, default=0, help="print at most this many (0: all)"),
    option("--format", "fmt", default="text", show_default=True, help="text (one line each) or json"),
    base=OpsCommand,
)
async def dlq(
    self: OpsCommand,
    action: str,
    where: tuple[str, ...],
    topic: str | None,
    error_class: str | None,
    since: str | None,
    limit: int,
    fmt: str,
) -> int:
    """Dead letters: `dlq list [filters]`, or `dlq show TOPIC PARTITION OFFSET` for one whole."""
    if fmt not in ("text", "json"):
        raise CommandError(f"--format must be text or json, not {fmt!r}")
    if limit < 0:
        raise CommandError("--limit must be >= 0")
    if action == "list":
        if where:
            raise CommandError("dlq list takes no positional arguments; filter with --topic, --error-class, --since")
        return await _list(_topics(topic), error_class, _since(since), limit, fmt)
    if action == "show":
        if len(where) != 3 or not where[1].isdigit() or not where[2].isdigit():
            raise CommandError("usage: dlq show TOPIC PARTITION OFFSET (the place `dlq list` prints)")
        return await _show(where[0], int(where[1]), int(where[2]))
    raise CommandError(f"unknown action {action!r}: list or show")


async def _list(topics: list[str], error_class: str | None, since: float | None, limit: int, fmt: str) -> int:
    shown = 0
    async for doc in _letters(topics):
        if error_class and error_class not in doc["error_class"]:
            continue
        if since is not None and doc["last_failure"] < since:
            continue
        print(json.dumps(doc, ensure_ascii=False) if fmt == "json" else _line(doc), flush=True)
        shown += 1
        if limit and shown >= limit:
            break
    return 0


async def _show(topic: str, partition: int, offset: int) -> int:
    logical = _topics(topic.removeprefix(app.settings.topic_prefix))
    async for doc in _letters(logical):
        if doc["dlq_partition"] == partition and doc["dlq_offset"] == offset:
            print(json.dumps(doc, ensure_ascii=False, indent=2))
            return 0
    raise CommandError(f"no dead letter at {topic}[{partition}]@{offset}", FAILED)
