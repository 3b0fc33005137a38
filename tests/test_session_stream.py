"""A live stream after the feed comes back (views/session_stream.py): everything stored meanwhile, in order."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any, cast

import pytest
from aiohttp import web

from app.faust_app import SomaApp, create_app
from app.feed_hub import FeedItem
from app.repository import Incoming, Source, store_batch
from tests.support.events import message
from tests.support.isolation import Isolated
from views.connections import registry
from views.session_stream import PAGE, SessionStream, SlowReader
from views.stream_connection import StreamConnection

MISSED = 2 * PAGE + 234  # more than one page of history reads


@pytest.fixture
async def app(iso: Isolated) -> AsyncIterator[SomaApp]:
    app = create_app(dataclasses.replace(iso.settings, stream_recovery_max=5_000))
    yield app
    pool = await app.resources.postgres()
    pool.close()
    await pool.wait_closed()


async def store(app: SomaApp, session: str, count: int) -> None:
    pool = await app.resources.postgres()
    events = [message(session, f"m{n}") for n in range(count)]
    for start in range(0, count, 500):
        chunk = events[start : start + 500]
        await store_batch(
            pool, [Incoming(e, Source("conversation.inbound", 0, start + n)) for n, e in enumerate(chunk)]
        )


async def live_seqs(stream: SessionStream, count: int) -> list[int]:
    seqs: list[int] = []

    async def collect() -> None:
        async for item in stream.live():
            seqs.append(item.seq)
            if len(seqs) == count:
                return

    # nothing more is stored meanwhile: what the stream yields comes from its catch-up alone
    try:
        await asyncio.wait_for(collect(), timeout=30)
    except TimeoutError:
        raise AssertionError(f"{len(seqs)} of {count} events within 30 s, the last seq {seqs[-1:]}") from None
    return seqs


async def test_a_feed_reconnect_catches_up_every_event_stored_meanwhile(app: SomaApp) -> None:
    await store(app, "catch-up", MISSED)
    stream = SessionStream(app.resources, app.settings.streams, "catch-up", after=0)
    stream._on_resync()  # what the feed hub tells every listener once it has subscribed again
    assert await live_seqs(stream, MISSED) == list(range(1, MISSED + 1))


async def test_a_gap_in_the_live_feed_is_filled_page_by_page(app: SomaApp) -> None:
    await store(app, "gap", MISSED)
    stream = SessionStream(app.resources, app.settings.streams, "gap", after=0)
    pool = await app.resources.postgres()
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT payload FROM session_events WHERE session_id = 'gap' AND seq = %s", (MISSED,))
        [(last,)] = await cur.fetchall()
    stream._on_event(FeedItem.of(last))  # the feed delivers the newest event only: the rest is a gap
    assert await live_seqs(stream, MISSED) == list(range(1, MISSED + 1))


async def test_a_viewer_further_behind_than_a_resume_may_replay_is_closed_to_resume(iso: Isolated) -> None:
    app = create_app(dataclasses.replace(iso.settings, stream_recovery_max=PAGE + 10))
    try:
        await store(app, "far-behind", MISSED)
        stream = SessionStream(app.resources, app.settings.streams, "far-behind", after=0)
        stream._on_resync()
        seqs: list[int] = []
        with pytest.raises(SlowReader, match="behind"):
            async for item in stream.live():
                seqs.append(item.seq)
        assert seqs == list(range(1, PAGE + 11)) and stream.last_sent == PAGE + 10  # resume from there
    finally:
        pool = await app.resources.postgres()
        pool.close()
        await pool.wait_closed()


async def test_a_stream_task_that_fails_is_logged_with_its_session(
    app: SomaApp, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing(StreamConnection):
        transport = "test"

        def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
            return {"sender": self._fail()}

        async def _fail(self) -> None:
            raise ValueError("a defect in the sender")

    connection = Failing(app, cast(web.Request, None), "logged-1", 0)
    with caplog.at_level(logging.ERROR, logger="views.stream_connection"):
        await connection.run()
    assert "logged-1" in caplog.text and "a defect in the sender" in caplog.text, caplog.text
    assert len(registry) == 0
