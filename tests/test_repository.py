"""The session repository on the real PostgreSQL: seqs, duplicates, envelope rules and a racing writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiopg
import psycopg2
import pytest

from app.repository import ConcurrentInsert, Incoming, Source, store_batch
from tests.support.db import query
from tests.support.events import message
from tests.support.isolation import Isolated


@pytest.fixture
async def pool(iso: Isolated) -> AsyncIterator[aiopg.Pool]:
    async with aiopg.create_pool(iso.settings.postgres_dsn, minsize=1, maxsize=4) as pool:
        yield pool


def incoming(event: dict[str, object], offset: int = 0) -> Incoming:
    return Incoming({**event}, Source("conversation.inbound", 0, offset))


async def test_a_batch_gets_each_sessions_next_seqs_and_a_replay_is_a_duplicate(
    pool: aiopg.Pool, iso: Isolated
) -> None:
    first = [message("s-a", "one"), message("s-b", "one"), message("s-a", "two")]
    result = await store_batch(pool, [incoming(e, n) for n, e in enumerate(first)])
    assert [(e["session_id"], e["seq"]) for e in result.stored] == [("s-a", 1), ("s-b", 1), ("s-a", 2)]
    assert {sid: env.last_seq for sid, env in result.envelopes.items()} == {"s-a": 2, "s-b": 1}

    again = [first[2], message("s-a", "three"), first[0]]
    result = await store_batch(pool, [incoming(e) for e in again])
    assert [e["message"] for e in result.stored] == ["three"]
    assert result.stored[0]["seq"] == 3
    assert [d.event["message"] for d in result.duplicates] == ["two", "one"]
    rows = query(iso.settings.postgres_dsn, "SELECT session_id, seq, payload FROM session_events ORDER BY id")
    assert [(r["session_id"], r["seq"], r["payload"]["message"]) for r in rows] == [
        ("s-a", 1, "one"),
        ("s-b", 1, "one"),
        ("s-a", 2, "two"),
        ("s-a", 3, "three"),
    ]
    assert all(r["payload"]["seq"] == r["seq"] for r in rows)  # the stored JSON carries its seq


async def test_an_event_twice_in_one_batch_is_stored_once(pool: aiopg.Pool) -> None:
    event = message("s-twice", "hello")
    result = await store_batch(pool, [incoming(event), incoming(event)])
    assert [e["seq"] for e in result.stored] == [1]
    assert len(result.duplicates) == 1


async def test_the_envelope_keeps_old_values_over_empty_ones_and_merges_metadata(
    pool: aiopg.Pool, iso: Isolated
) -> None:
    await store_batch(
        pool, [incoming(message("s-env", "a", persona_id="p1", metadata={"tenant": "t1", "channel": "web"}))]
    )
    await store_batch(pool, [incoming(message("s-env", "b", persona_id="", metadata={"locale": "fr"}))])
    [row] = query(iso.settings.postgres_dsn, "SELECT * FROM session_envelopes WHERE session_id = 's-env'")
    assert (row["persona_id"], row["tenant"], row["last_seq"]) == ("p1", "t1", 2)
    assert row["metadata"] == {"tenant": "t1", "channel": "web", "locale": "fr"}


async def test_an_event_stored_by_a_racing_writer_rolls_the_batch_back_whole(pool: aiopg.Pool, iso: Isolated) -> None:
    """Another writer stores an event of the batch after the batch found it new: the batch's insert waits on
    the unique index, then fails; nothing of it is stored and no seq is spent (ConcurrentInsert, which the
    pipeline retries), and the retry reports the event as a duplicate."""
    dsn = iso.settings.postgres_dsn
    shared, own = message("s-race-1", "shared"), message("s-race-2", "own")
    other = psycopg2.connect(dsn)
    try:
        with other.cursor() as cur:  # the racing writer, its transaction left open
            # under another session, so that only the event id's unique index makes the batch wait
            cur.execute("INSERT INTO session_envelopes (session_id, last_seq) VALUES ('s-race-x', 1)")
            cur.execute(
                "INSERT INTO session_events (event_id, session_id, seq, type, role, payload, occurred_at)"
                " VALUES (%s, 's-race-x', 1, 'user.message', 'user', '{}', now())",
                (shared["event_id"],),
            )
        batch = asyncio.ensure_future(store_batch(pool, [incoming(own), incoming(shared)]))

        def insert_waits() -> bool:
            waiting = query(
                dsn,
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO session_events%%'",
            )
            return bool(waiting[0]["n"])

        deadline = asyncio.get_running_loop().time() + 30
        while not insert_waits():
            assert not batch.done(), batch.result()
            assert asyncio.get_running_loop().time() < deadline, "the batch never waited for the racing writer"
            await asyncio.sleep(0.05)
        other.commit()
        with pytest.raises(ConcurrentInsert):
            await batch
    finally:
        other.close()
    assert query(dsn, "SELECT count(*) AS n FROM session_events WHERE session_id <> 's-race-x'") == [{"n": 0}]
    retry = await store_batch(pool, [incoming(own), incoming(shared)])
    assert [(e["session_id"], e["seq"]) for e in retry.stored] == [("s-race-2", 1)]
    assert [d.event["event_id"] for d in retry.duplicates] == [shared["event_id"]]
    envelopes = query(dsn, "SELECT session_id, last_seq FROM session_envelopes ORDER BY session_id")
    assert envelopes == [{"session_id": "s-race-2", "last_seq": 1}, {"session_id": "s-race-x", "last_seq": 1}]


async def test_a_replayed_event_is_fed_again_only_while_nothing_follows_it(pool: aiopg.Pool) -> None:
    """A duplicate at its session's head may never have been published (its worker died after the commit):
    it is handed back to be fed again. One followed by a later event, or replayed beside a new event of its
    session, is not: a viewer that missed it fetches it on the gap that the later event shows."""
    head = [message("s-head", "a"), message("s-head", "b")]
    await store_batch(pool, [incoming(e) for e in head])
    replay = await store_batch(pool, [incoming(e) for e in head])
    assert [(e["message"], e["seq"]) for e in replay.republished] == [("a", 1), ("b", 2)]

    followed = message("s-followed", "a")
    await store_batch(pool, [incoming(followed), incoming(message("s-followed", "b"))])
    assert (await store_batch(pool, [incoming(followed)])).republished == []

    beside_new = message("s-beside", "a")
    await store_batch(pool, [incoming(beside_new)])
    result = await store_batch(pool, [incoming(beside_new), incoming(message("s-beside", "b"))])
    assert result.republished == [] and [e["seq"] for e in result.stored] == [2]
