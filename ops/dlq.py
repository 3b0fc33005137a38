"""``faust -A app dlq list|show``: the dead letters of the session topics, read straight from Kafka.

``list`` prints one line per dead letter (its place, error class, attempts, origin and a payload preview) or
with ``--format json`` the full ``dead_letter`` document (schemas/dead_letter.schema.json); filters: ``--topic``
(a session topic: its ``.dlq``), ``--error-class`` (a substring of the class name), ``--since`` (ISO 8601 time
of the last failure), ``--limit``. ``show TOPIC PARTITION OFFSET`` prints one dead letter whole, stack trace
included. ``redrive`` republishes the chosen ones (filters, or one place) to their original topic and
partition with their original key, value and headers; the store keeps an event once, so a redriven event
stored before is not stored again, and one that fails again returns to the dead-letter topic with its attempts
added to the earlier ones. ``--dry-run`` prints what would go; ``--rate`` paces it; a progress bar on a
terminal and a summary at the end.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from faust.cli import argument, option

from agents.boundary import FAILURE_HEADERS, REDRIVE_ATTEMPTS, REDRIVE_FIRST_FAILURE
from app import app
from app.topics import SESSION_TOPICS, dead_letter
from ops import kafka
from ops.base import FAILED, CommandError, OpsCommand, iso_time
from tools import dead_letters

PREVIEW = 80


def _topics(topic: str | None) -> list[str]:
    if topic is None:
        return list(SESSION_TOPICS)
    if topic.endswith(".dlq"):
        topic = topic.removesuffix(".dlq")
    if topic not in SESSION_TOPICS:
        raise CommandError(f"unknown topic {topic!r}; one of {', '.join(SESSION_TOPICS)}")
    return [topic]


async def _letters(topics: list[str]) -> AsyncIterator[tuple[dict[str, Any], ConsumerRecord]]:
    """Every dead letter of ``topics``' dead-letter topics (document and record), from the first to the last at
    the start of the read."""
    settings = app.settings
    async with kafka.consumer() as consumer:
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
                        doc = dead_letters.view(
                            record.key, record.value, list(record.headers), record.partition, record.offset
                        )
                        yield doc | {"dlq_topic": tp.topic}, record
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)


def _line(doc: dict[str, Any]) -> str:
    failed = datetime.fromtimestamp(doc["last_failure"], UTC).isoformat(timespec="seconds")
    value = (doc["value"] or "").replace("\n", " ")
    preview = value if len(value) <= PREVIEW else value[: PREVIEW - 1] + "…"
    origin = f"{doc['source_topic']}[{doc['source_partition']}]@{doc['source_offset']}"
    place = f"{doc['dlq_topic']}[{doc['dlq_partition']}]@{doc['dlq_offset']}"
    return f"{place}  {failed}  {doc['error_class']}  attempts={doc['attempts']}  from {origin}  {preview}"


def _chosen(doc: dict[str, Any], error_class: str | None, since: float | None) -> bool:
    return (not error_class or error_class in doc["error_class"]) and (since is None or doc["last_failure"] >= since)


@app.command(
    argument("action", type=str),
    argument("where", nargs=-1, type=str),
    option("--topic", default=None, help="a session topic (conversation.inbound, ...): its dead letters only"),
    option("--error-class", default=None, help="only dead letters whose error class contains this"),
    option("--since", default=None, help="only dead letters whose last failure is at or after this ISO 8601 time"),
    option("--limit", type=int, default=0, help="at most this many (0: all)"),
    option("--format", "fmt", default="text", show_default=True, help="text (one line each) or json"),
    option("--rate", type=float, default=0.0, help="redrive: at most this many records per second (0: no limit)"),
    option("--dry-run", is_flag=True, default=False, help="redrive: print what would be republished, send nothing"),
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
    rate: float,
    dry_run: bool,
) -> int:
    """Dead letters: `dlq list [filters]`, `dlq show TOPIC PARTITION OFFSET` for one whole, or
    `dlq redrive [TOPIC PARTITION OFFSET] [filters]` to republish them to their original topic."""
    if fmt not in ("text", "json"):
        raise CommandError(f"--format must be text or json, not {fmt!r}")
    if limit < 0:
        raise CommandError("--limit must be >= 0")
    if action == "list":
        if where:
            raise CommandError("dlq list takes no positional arguments; filter with --topic, --error-class, --since")
        return await _list(_topics(topic), error_class, iso_time("--since", since), limit, fmt)
    if action == "show":
        return await _show(*_place(where, "show"))
    if action == "redrive":
        one = _place(where, "redrive") if where else None
        topics = _topics(one[0].removeprefix(app.settings.topic_prefix)) if one else _topics(topic)
        return await _redrive(topics, one, error_class, iso_time("--since", since), limit, kafka.Pace(rate), dry_run)
    raise CommandError(f"unknown action {action!r}: list, show or redrive")


def _place(where: tuple[str, ...], action: str) -> tuple[str, int, int]:
    if len(where) != 3 or not where[1].isdigit() or not where[2].isdigit():
        raise CommandError(f"usage: dlq {action} TOPIC PARTITION OFFSET (the place `dlq list` prints)")
    return where[0], int(where[1]), int(where[2])


async def _list(topics: list[str], error_class: str | None, since: float | None, limit: int, fmt: str) -> int:
    shown = 0
    async for doc, _ in _letters(topics):
        if not _chosen(doc, error_class, since):
            continue
        print(json.dumps(doc, ensure_ascii=False) if fmt == "json" else _line(doc), flush=True)
        shown += 1
        if limit and shown >= limit:
            break
    return 0


async def _show(topic: str, partition: int, offset: int) -> int:
    logical = _topics(topic.removeprefix(app.settings.topic_prefix))
    async for doc, _ in _letters(logical):
        if doc["dlq_partition"] == partition and doc["dlq_offset"] == offset:
            print(json.dumps(doc, ensure_ascii=False, indent=2))
            return 0
    raise CommandError(f"no dead letter at {topic}[{partition}]@{offset}", FAILED)


def redriven_headers(doc: dict[str, Any], record: ConsumerRecord) -> list[tuple[str, bytes]]:
    """The original record's headers, without the failure's, plus what a new failure must carry on: how many
    attempts were made and when the first failed (agents/boundary.py adds them up), and where it came from."""
    kept = [(name, value) for name, value in record.headers if not name.startswith(FAILURE_HEADERS)]
    return [
        *kept,
        (REDRIVE_ATTEMPTS, str(doc["attempts"]).encode()),
        (REDRIVE_FIRST_FAILURE, f"{doc['first_failure']:.6f}".encode()),
        ("soma.redrive.from", f"{doc['dlq_topic']}[{doc['dlq_partition']}]@{doc['dlq_offset']}".encode()),
    ]


async def _redrive(
    topics: list[str],
    one: tuple[str, int, int] | None,
    error_class: str | None,
    since: float | None,
    limit: int,
    pace: kafka.Pace,
    dry_run: bool,
) -> int:
    chosen: list[tuple[dict[str, Any], ConsumerRecord]] = []
    async for doc, record in _letters(topics):
        if one is not None and (doc["dlq_partition"], doc["dlq_offset"]) != one[1:]:
            continue
        if _chosen(doc, error_class, since):
            chosen.append((doc, record))
            if limit and len(chosen) >= limit:
                break
    if one is not None and not chosen:
        raise CommandError(f"no dead letter at {one[0]}[{one[1]}]@{one[2]}", FAILED)
    if dry_run:
        for doc, _ in chosen:
            print(f"would redrive {_line(doc)}")
        print(f"dry run: {len(chosen)} dead letter(s) would be republished")
        return 0
    sent: Counter[str] = Counter()
    async with kafka.producer() as producer:
        with kafka.progress(len(chosen), "redriving", pace) as bar:
            for doc, record in chosen:
                partitions = producer._metadata.partitions_for_topic(doc["source_topic"]) or set()
                await producer.send_and_wait(
                    doc["source_topic"],
                    key=record.key,
                    value=record.value,
                    # its original partition (the session's), unless the topic no longer has it
                    partition=doc["source_partition"] if doc["source_partition"] in partitions else None,
                    headers=redriven_headers(doc, record),
                )
                sent[doc["source_topic"]] += 1
                await pace.tick()
                if bar is not None:
                    bar.update(1, True)
    where = ", ".join(f"{name}: {count}" for name, count in sorted(sent.items())) or "none"
    print(f"redriven {len(chosen)} dead letter(s) to their topics ({where})")
    return 0
