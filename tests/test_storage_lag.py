"""Load shedding on storage lag: while storage is behind, client messages are refused on every worker, not lost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import pytest

from app.settings import Settings
from app.storage_lag import StorageLag, _highest
from tests.support.client import get_json
from tests.support.db import query, wait_rows
from tests.support.isolation import Isolated
from tests.support.worker import Worker, running_pair
from tests.test_replicas import session_on, settled

LIMIT_SECONDS = 1.0


@pytest.fixture
async def pair(iso: Isolated, artifacts: Path) -> AsyncIterator[tuple[Worker, Worker]]:
    env = iso.env(SOMA_MAX_STORAGE_LAG_SECONDS=str(LIMIT_SECONDS))
    async with running_pair(env, artifacts / "logs", f"lag-{iso.tag}") as workers:
        yield workers


async def post(http: aiohttp.ClientSession, worker: Worker, session: str, text: str) -> tuple[int, Any, str | None]:
    async with http.post(worker.url + "/v1/session/message", json={"session_id": session, "message": text}) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")


async def until(worker: Worker, what: str, check: Any, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        _, info = await get_json(worker.url, "/v1/worker")
        if check(info["storage_lag"]):
            return dict(info["storage_lag"])
        assert time.monotonic() < deadline, f"{what} within {timeout} s: {info['storage_lag']}"
        await asyncio.sleep(0.1)


async def test_while_storage_is_behind_every_worker_refuses_messages_and_none_accepted_is_lost(
    iso: Isolated, pair: tuple[Worker, Worker]
) -> None:
    a, b = pair
    settings = iso.settings
    on_a, on_b = await settled(a, b, iso.topic("conversation.inbound"), settings.topic_partitions)
    on_a_session = session_on(on_a, settings.topic_partitions)
    on_b_session = session_on(on_b, settings.topic_partitions)
    accepted: list[str] = []
    async with aiohttp.ClientSession() as http:
        status, body, _ = await post(http, b, on_b_session, "before")
        assert status == 202, body
        accepted.append(body["event_id"])
        await wait_rows(settings.postgres_dsn, "SELECT 1 FROM session_events", (), 1)

        # storage stalls: every store waits for this lock (a real PostgreSQL lock, held by another client)
        blocker = psycopg2.connect(settings.postgres_dsn)
        try:
            with blocker.cursor() as cur:
                cur.execute("LOCK TABLE session_envelopes IN ACCESS EXCLUSIVE MODE")
            status, body, _ = await post(http, b, on_b_session, "stalled")
            assert status == 202, body  # nothing is behind yet
            accepted.append(body["event_id"])
            await until(b, "B's own lag past the limit", lambda lag: lag["local_s"] > LIMIT_SECONDS)

            status, body, retry_after = await post(http, b, on_b_session, "refused on B")
            assert status == 503, body
            assert body["error"]["code"] == "storage_behind", body
            assert retry_after is not None and int(retry_after) >= 1

            # A stores nothing of its own (its partitions have nothing pending): it refuses on B's report
            seen_on_a = await until(a, "B's lag reported to A", lambda lag: lag["others_s"] > LIMIT_SECONDS)
            assert seen_on_a["local_s"] == 0.0, seen_on_a
            status, body, retry_after = await post(http, a, on_a_session, "refused on A")
            assert status == 503, body
            assert body["error"]["code"] == "storage_behind", body
            assert retry_after is not None
        finally:
            blocker.rollback()
            blocker.close()

        # storage catches up: messages are accepted again on both workers
        for worker, session in ((b, on_b_session), (a, on_a_session)):
            deadline = time.monotonic() + 60
            while True:
                status, body, _ = await post(http, worker, session, f"after {uuid.uuid4().hex[:6]}")
                if status == 202:
                    accepted.append(body["event_id"])
                    break
                assert status == 503 and body["error"]["code"] == "storage_behind", body
                assert time.monotonic() < deadline, "messages still refused a minute after storage caught up"
                await asyncio.sleep(0.2)

    # every message answered 202 is stored exactly once; the refused ones never reached the topic
    rows = await wait_rows(settings.postgres_dsn, "SELECT event_id::text FROM session_events", (), len(accepted))
    assert sorted(row["event_id"] for row in rows) == sorted(accepted)
    texts = query(settings.postgres_dsn, "SELECT payload->>'message' AS text FROM session_events")
    assert not any(row["text"].startswith("refused") for row in texts), texts
    _, info_b = await get_json(b.url, "/v1/worker")
    _, info_a = await get_json(a.url, "/v1/worker")
    assert info_b["storage_lag"]["refused"] >= 1 and info_a["storage_lag"]["refused"] >= 1


def test_the_lag_is_the_age_of_the_oldest_accepted_message_not_processed_anywhere() -> None:
    lag = StorageLag(Settings(), redis=None)
    assert lag.local(now=100.0) == 0.0
    lag.processed([("in", 0, 5), ("in", 1, 2)])  # this worker stores partitions 0 and 1
    lag.accepted("in", 0, 10, at=100.0)
    lag.accepted("in", 0, 11, at=101.0)
    lag.accepted("in", 1, 5, at=102.0)
    assert lag.local(now=110.0) == 10.0
    # records of other producers (a replay, a direct producer) count only by the offsets they move
    lag.processed([("in", 0, 9)])
    assert lag.local(now=110.0) == 10.0
    lag.processed([("in", 0, 10)])
    assert lag.local(now=110.0) == 9.0
    lag.processed([("in", 0, 11), ("in", 1, 7)])
    assert lag.local(now=110.0) == 0.0
    # a partition another worker stores counts only while its progress is known (read from Redis lately)
    lag.accepted("in", 2, 40, at=105.0)
    assert lag.local(now=110.0) == 0.0  # never read: it may well be stored, nothing is refused for it
    lag._shared_at = 109.0
    assert lag.local(now=110.0) == 5.0
    assert lag.local(now=113.0) == 0.0  # the last read is older than STALE_SECONDS: unknown again
    lag._processed["in:2"] = 41  # stored elsewhere, as read from Redis
    assert lag.local(now=110.0) == 0.0


def test_other_workers_reports_count_while_fresh_and_are_forgotten_when_old() -> None:
    now = 10_000.0
    reports = [
        (b"me", b"9.000 10000.000"),  # this worker's own: not another's
        (b"b", b"2.500 9999.600"),
        (b"c", b"7.000 9990.000"),  # stale: its worker stopped reporting
        (b"d", b"1.000 9000.000"),  # long gone
        (b"e", b"garbage"),
    ]
    assert _highest(reports, "me", now) == (2.5, [b"d", b"e"])
