"""Reading the real database back, with a deadline for rows that an agent writes asynchronously."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg2
import psycopg2.extras


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            return [dict(row) for row in cur.fetchall()]
    finally:
        conn.close()


async def wait_rows(
    dsn: str, sql: str, params: tuple[Any, ...], count: int, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Poll until ``sql`` returns at least ``count`` rows; fail with what it saw at the deadline."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = query(dsn, sql, params)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.2)
    raise AssertionError(f"{len(rows)} rows within {timeout} s, expected {count}: {sql}")
