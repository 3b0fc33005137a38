"""Migrations: applied once, rolled back cleanly, and giving the tables the queries need."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg2
import pytest

from app.settings import Settings
from tests.support.db import query
from tests.support.isolation import RUN_PREFIX, admin_execute, with_database
from tools import migrate


@pytest.fixture
def empty_db(stack: Settings) -> Iterator[str]:
    name = f"{RUN_PREFIX}mig_{uuid.uuid4().hex[:8]}"
    admin_execute(stack.postgres_dsn, f'CREATE DATABASE "{name}"')
    yield with_database(stack.postgres_dsn, name)
    admin_execute(stack.postgres_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tables(dsn: str) -> set[str]:
    rows = query(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


def test_apply_is_idempotent_and_rollback_is_clean(empty_db: str) -> None:
    assert migrate.apply(empty_db) >= 1
    assert migrate.apply(empty_db) == 0
    assert {"session_events", "session_envelopes"} <= tables(empty_db)
    assert migrate.rollback(empty_db) >= 1
    assert not {"session_events", "session_envelopes"} & tables(empty_db)
    assert migrate.apply(empty_db) >= 1


def test_history_and_resume_queries_use_the_session_seq_index(empty_db: str) -> None:
    migrate.apply(empty_db)
    columns = {
        r["column_name"]: r["data_type"]
        for r in query(
            empty_db,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'session_events'",
        )
    }
    assert columns["event_id"] == "uuid"
    assert columns["seq"] == "bigint"
    assert columns["payload"] == "jsonb"
    assert {"session_id", "type", "role", "occurred_at"} <= set(columns)
    conn = psycopg2.connect(empty_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SET enable_seqscan = off")
            cur.execute(
                "EXPLAIN SELECT payload FROM session_events WHERE session_id = 's' AND seq > 10 ORDER BY seq LIMIT 100"
            )
            plan = "\n".join(row[0] for row in cur.fetchall())
    finally:
        conn.close()
    assert "session_events_session_seq" in plan


def test_event_id_and_session_seq_are_unique(empty_db: str) -> None:
    migrate.apply(empty_db)
    conn = psycopg2.connect(empty_db)
    conn.autocommit = True
    insert = (
        "INSERT INTO session_events (event_id, session_id, seq, type, role, payload, occurred_at) "
        "VALUES (%s, 's', %s, 'user.message', 'user', '{}', now())"
    )
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO session_envelopes (session_id) VALUES ('s')")
            first = str(uuid.uuid4())
            cur.execute(insert, (first, 1))
            with pytest.raises(psycopg2.errors.UniqueViolation):
                cur.execute(insert, (first, 2))
            with pytest.raises(psycopg2.errors.UniqueViolation):
                cur.execute(insert, (str(uuid.uuid4()), 1))
    finally:
        conn.close()
