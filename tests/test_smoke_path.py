"""The seed's smoke path on the real servers: POST -> conversation.inbound -> agent -> Postgres row."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.db import query, wait_rows
from tests.support.isolation import Isolated
from tests.support.kafka import end_offsets, read_topic
from tests.support.worker import Worker, running

EVENTS_OF = "SELECT * FROM session_events WHERE session_id = %s ORDER BY seq"


@pytest.fixture(scope="module")
async def worker(iso_module: Isolated, artifacts: Path) -> AsyncIterator[Worker]:
    async with running(iso_module.env(), artifacts / "logs" / f"smoke-{iso_module.tag}.log") as worker:
        yield worker


async def post(worker: Worker, body: bytes, content_type: str | None = "application/json") -> tuple[int, dict]:
    headers = {"Content-Type": content_type} if content_type else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(worker.url + "/v1/session/message", data=io.BytesIO(body), headers=headers) as resp,
    ):
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def test_message_reaches_kafka_then_postgres(worker: Worker, iso_module: Isolated) -> None:
    settings = iso_module.settings
    status, answer = await post(worker, json.dumps({"message": "hello, backbone", "metadata": {"k": "v"}}).encode())
    assert status == 202, answer
    session_id, event_id = answer["session_id"], answer["event_id"]
    uuid.UUID(session_id)
    uuid.UUID(event_id)

    # a real consumer reads the record back: keyed by session, JSON value, headers present
    topic = iso_module.topic("conversation.inbound")
    records = [r for r in await read_topic(settings.kafka_bootstrap, topic, expect=1) if r.key == session_id.encode()]
    assert len(records) == 1
    record = records[0]
    value = json.loads(record.value)
    assert value["event_id"] == event_id
    assert value["message"] == "hello, backbone"
    assert value["role"] == "user" and value["type"] == "user.message"
    headers = dict(record.headers)
    assert headers["content-type"] == b"application/json"
    assert headers["soma-event-id"] == event_id.encode()
    assert headers["soma-schema"] == b"conversation_event"

    # the agent stored it: one row, seq 1, the same JSON (plus its seq)
    rows = await wait_rows(settings.postgres_dsn, EVENTS_OF, (session_id,), 1)
    assert len(rows) == 1
    row = rows[0]
    assert str(row["event_id"]) == event_id
    assert row["seq"] == 1
    assert row["payload"] == {**value, "seq": 1}
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == (
        topic,
        record.partition,
        record.offset,
    )
    envelope = query(settings.postgres_dsn, "SELECT * FROM session_envelopes WHERE session_id = %s", (session_id,))
    assert envelope[0]["metadata"] == {"k": "v"} and envelope[0]["last_seq"] == 1


async def test_session_events_are_sequenced_in_order(worker: Worker, iso_module: Isolated) -> None:
    session_id = f"seq-{uuid.uuid4()}"
    ids = []
    for n in range(5):
        status, answer = await post(worker, json.dumps({"session_id": session_id, "message": f"m{n}"}).encode())
        assert status == 202 and answer["session_id"] == session_id
        ids.append(answer["event_id"])
    rows = await wait_rows(iso_module.settings.postgres_dsn, EVENTS_OF, (session_id,), 5)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert [str(r["event_id"]) for r in rows] == ids
    assert [r["payload"]["message"] for r in rows] == [f"m{n}" for n in range(5)]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"this is not json", "application/json", 400, "malformed_json"),
        (b'{"message": "unterminated', "application/json", 400, "malformed_json"),
        (b"\xff\xfe\x00", "application/json", 400, "malformed_json"),
        (b"{}", "application/json", 422, "validation_failed"),
        (b'{"session_id": "s1"}', "application/json", 422, "validation_failed"),
        (b'{"message": 42}', "application/json", 422, "validation_failed"),
        (b'{"message": ""}', "application/json", 422, "validation_failed"),
        (b'["message"]', "application/json", 422, "validation_failed"),
        (b'{"message": "hi", "session_id": "has spaces"}', "application/json", 422, "validation_failed"),
        (b'{"message": "hi", "metadata": {"n": 1}}', "application/json", 422, "validation_failed"),
        (b'{"message": "hi", "unknown": true}', "application/json", 422, "validation_failed"),
        (b"message=hi", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"message": "' + b"x" * (2 * 1024 * 1024) + b'"}', "application/json", 413, "payload_too_large"),
    ],
)
async def test_bad_input_is_a_4xx_with_a_code_and_nothing_reaches_kafka(
    worker: Worker, iso_module: Isolated, body: bytes, content_type: str, status: int, code: str
) -> None:
    topic = iso_module.topic("conversation.inbound")
    before = await end_offsets(iso_module.settings.kafka_bootstrap, topic)
    got_status, answer = await post(worker, body, content_type)
    assert got_status == status, answer
    assert answer["error"]["code"] == code
    assert answer["error"]["message"]
    assert await end_offsets(iso_module.settings.kafka_bootstrap, topic) == before
