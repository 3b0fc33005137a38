"""The session table's reader: while PostgreSQL is away, any replica answers a session's envelope from Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import aiohttp

from app.settings import Settings
from tests.support.blocking import off_loop
from tests.support.client import get_json, post_message
from tests.support.db import wait_rows
from tests.support.isolation import Isolated
from tests.support.private import private_postgres
from tests.support.worker import Worker
from tools import migrate


async def until_answered(url: str, path: str, check: Any, timeout: float = 60.0) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await get_json(url, path)
        if check(status, body):
            return status, body
        assert time.monotonic() < deadline, f"{path}: {status} {body}"
        await asyncio.sleep(0.2)


async def test_while_postgres_is_away_the_envelope_comes_from_the_session_table_on_any_replica(
    iso: Isolated, stack: Settings, artifacts: Path
) -> None:
    async with off_loop(private_postgres(stack)) as postgres:
        await asyncio.to_thread(migrate.apply, postgres.dsn)
        settings = dataclasses.replace(iso.settings, postgres_dsn=postgres.dsn, read_deadline_seconds=1.0)
        env = dataclasses.replace(iso, settings=settings).env()
        a = await Worker(env, artifacts / "logs" / f"table-reader-a-{iso.tag}.log").started()
        b = await Worker(env, artifacts / "logs" / f"table-reader-b-{iso.tag}.log").started()
        session = f"table-{iso.tag}"
        try:
            await asyncio.gather(a.wait_http(), b.wait_http())
            for n in range(3):
                body = {"session_id": session, "message": f"m{n}", "persona_id": "p1", "metadata": {"k": str(n)}}
                status, answer = await post_message(a.url, body)
                assert status == 202, answer
            await wait_rows(postgres.dsn, "SELECT 1 FROM session_events", (), 3)
            _, exact = await get_json(a.url, f"/v1/session/{session}")
            assert exact["last_seq"] == 3 and "stale" not in exact

            assert await asyncio.to_thread(postgres.stop)
            # whichever worker stored the session wrote it to the table; both answer from Redis, the same copy
            # as PostgreSQL's (the table is written a mirror interval and a flush after the store)
            for worker in (a, b):
                status, copy = await until_answered(worker.url, f"/v1/session/{session}", lambda s, _: s == 200)
                assert copy == {**exact, "stale": True}, worker.log()
            # a session the table does not hold: PostgreSQL's answer, 503 with Retry-After
            async with aiohttp.ClientSession() as http, http.get(f"{a.url}/v1/session/no-such-{iso.tag}") as resp:
                assert resp.status == 503 and resp.headers["Retry-After"]
                assert (await resp.json())["error"]["code"] == "storage_unavailable"

            assert await asyncio.to_thread(postgres.up) == "started"
            await until_answered(a.url, f"/v1/session/{session}", lambda s, body: s == 200 and "stale" not in body)
        finally:
            await a.stopped()
            await b.stopped()
