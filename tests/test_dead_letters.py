"""Poison records go to their topic's dead-letter topic with their reason; valid ones are all stored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.db import wait_rows
from tests.support.events import check_sequenced, message, record
from tests.support.isolation import Isolated
from tests.support.kafka import create_topic, produce, read_topic
from tests.support.worker import Worker
from tools import dead_letters

ALL_ROWS = "SELECT * FROM session_events ORDER BY id"
MAX_EVENT_BYTES = 4096
# what psycopg2 raises for U+0000 in a jsonb value (SQLSTATE 22P05)
NUL_REFUSED = "psycopg2.errors.UntranslatableCharacter"


@pytest.fixture
async def worker(iso: Isolated, artifacts: Path) -> AsyncIterator[Worker]:
    worker = await Worker(
        iso.env(SOMA_MAX_EVENT_BYTES=str(MAX_EVENT_BYTES)), artifacts / "logs" / f"dlq-{iso.tag}.log"
    ).started()
    await worker.wait_http()
    yield worker
    await worker.stopped()


async def test_poison_is_dead_lettered_with_its_reason_and_valid_events_are_stored(
    iso: Isolated, worker: Worker
) -> None:
    settings = iso.settings
    topic = iso.topic("conversation.inbound")
    dlq = iso.topic("conversation.inbound.dlq")
    session = b"poison-1"
    wrong_schema = message("poison-1", "no role")
    del wrong_schema["role"]
    oversize = message("poison-1", "x" * MAX_EVENT_BYTES)
    wrong_key = message("someone-else", "keyed by poison-1")
    valid = [message("poison-1", f"valid {n}") for n in range(4)]
    poison: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], str]] = [
        (session, b"this is not json", [("origin", b"test")], "json.decoder.JSONDecodeError"),
        (session, json.dumps(wrong_schema).encode(), [], "app.errors.EventInvalid"),
        (session, json.dumps(oversize).encode(), [], "agents.boundary.EventTooLarge"),
        (session, b"\xff\xfe not utf-8", [], "builtins.UnicodeDecodeError"),
        (session, json.dumps(wrong_key).encode(), [], "app.errors.EventInvalid"),
        (session, b"[1, 2, 3]", [], "app.errors.EventInvalid"),
        # nested 1,500 deep: the stdlib parser raised RecursionError, retried without end (the partition stuck)
        (session, b'{"a":' + b"[" * 1_500 + b"]" * 1_500 + b"}", [], "json.decoder.JSONDecodeError"),
        # valid JSON and schema, refused by PostgreSQL inside the batch insert: its batch is split, it alone
        # is dead-lettered
        (session, json.dumps(message("poison-1", "nul \u0000 here")).encode(), [], NUL_REFUSED),
    ]
    records = []
    for n, (key, value, headers, _) in enumerate(poison):
        records.append((key, value, headers))
        if n < len(valid):
            records.append(record(valid[n]))
    positions = await produce(settings.kafka_bootstrap, topic, records)

    rows = await wait_rows(settings.postgres_dsn, ALL_ROWS, (), len(valid))
    check_sequenced(rows, valid)
    letters = await read_topic(settings.kafka_bootstrap, dlq, expect=len(poison))
    assert len(letters) == len(poison)
    letters.sort(key=lambda r: int(dict(r.headers)["__connect.errors.offset"]))
    poison_positions = [p for p, r in zip(positions, records, strict=True) if r not in [record(v) for v in valid]]
    for letter, (key, value, headers, error_class), (partition, offset) in zip(
        letters, poison, poison_positions, strict=True
    ):
        # the original record, byte for byte, in the same partition
        assert (letter.key, letter.value, letter.partition) == (key, value, partition)
        assert list(letter.headers)[: len(headers)] == headers
        doc = dead_letters.view(letter.key, letter.value, letter.headers, letter.partition, letter.offset)
        assert (doc["source_topic"], doc["source_partition"], doc["source_offset"]) == (topic, partition, offset)
        assert doc["error_class"] == error_class, doc
        assert doc["error_message"]
        assert doc["attempts"] == 1
        assert doc["first_failure"] <= doc["last_failure"]
        assert "Traceback" in doc["stacktrace"]
    # the agent handled every poison record itself: faust's supervisor never had to restart it
    log = worker.log(100_000)
    assert "Crashed" not in log and "Restarting" not in log
    assert worker.proc is not None and worker.proc.poll() is None


@pytest.mark.parametrize(
    ("name", "schema"),
    [
        ("conversation.outbound", "conversation_event"),
        ("tool.requests", "tool_request"),
        ("tool.results", "tool_result"),
    ],
)
async def test_each_topic_dead_letters_to_its_own_dlq(iso: Isolated, worker: Worker, name: str, schema: str) -> None:
    settings = iso.settings
    topic = iso.topic(name)
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    await produce(settings.kafka_bootstrap, topic, [(b"s-1", b'{"session_id": "s-1"}', [])])
    (letter,) = await read_topic(settings.kafka_bootstrap, iso.topic(name + ".dlq"), expect=1)
    doc = dead_letters.view(letter.key, letter.value, letter.headers)
    assert doc["source_topic"] == topic
    assert doc["error_class"] == "app.errors.EventInvalid"
    assert doc["error_message"].startswith(schema)
