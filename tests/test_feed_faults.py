"""Redis faults: every viewer gets every event once, in order, without reconnecting; a stall is no outage."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp

from app import redis_client
from app.settings import Settings
from tests.support.blocking import off_loop
from tests.support.client import SseReader, get_json, post_message, ws_frames
from tests.support.db import wait_rows
from tests.support.isolation import Isolated
from tests.support.private import private_redis
from tests.support.worker import running


async def post_all(base: str, session: str, texts: list[str]) -> None:
    for text in texts:
        status, answer = await post_message(base, {"session_id": session, "message": text})
        assert status == 202, answer


def seqs_and_texts(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(e["seq"], e["message"]) for e in events]


async def test_viewers_get_every_event_after_redis_is_down_20_s(
    iso: Isolated, stack: Settings, artifacts: Path
) -> None:
    async with off_loop(private_redis(stack)) as redis_server:
        # storage waits for the feed while Redis is away, so messages posted then would be refused after
        # SOMA_MAX_STORAGE_LAG_SECONDS (tests/test_storage_lag.py); here every one of them is accepted
        settings = dataclasses.replace(iso.settings, redis_url=redis_server.url, max_storage_lag_seconds=0.0)
        env = dataclasses.replace(iso, settings=settings).env()
        session = f"feed-{iso.tag}"
        before = [f"before {n}" for n in range(20)]
        during = [f"during {n}" for n in range(20)]
        after = [f"after {n}" for n in range(20)]
        async with (
            running(env, artifacts / "logs" / f"feed-redis-{iso.tag}.log") as worker,
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{worker.url}/v1/session/{session}/stream") as ws,
            http.get(f"{worker.url}/v1/session/{session}/events", headers={"Accept": "text/event-stream"}) as resp,
        ):
            sse = SseReader(resp)
            assert (await ws_frames(ws, 1))[0]["type"] == "recovered"
            # the retry: block, then recovered
            assert [e["event"] for e in await sse.events(2)] == [None, "recovered"]
            await post_all(worker.url, session, before)
            # Redis answers nothing for 3 s, longer than the 2 s health timeout (as a worker's busy event loop
            # once made it seem): a POST that needs it (Idempotency-Key) waits, it is no false 503 outage
            pauser = redis_client.connect(redis_server.url)
            try:
                assert await pauser.execute_command("CLIENT", "PAUSE", "3000", "ALL")
            finally:
                await pauser.aclose()
            status, answer = await post_message(
                worker.url, {"session_id": session, "message": "stalled"}, {"Idempotency-Key": f"stall-{iso.tag}"}
            )
            assert status == 202, answer
            before.append("stalled")
            # Redis goes away for 20 s while events are stored (one a second), and comes back (its
            # append-only file keeps its data)
            assert await asyncio.to_thread(redis_server.stop)
            for text in during:
                await post_all(worker.url, session, [text])
                await asyncio.sleep(1.0)
            assert await asyncio.to_thread(redis_server.up) == "started"
            await post_all(worker.url, session, after)
            expected = [(n + 1, text) for n, text in enumerate(before + during + after)]
            got_ws = await ws_frames(ws, len(expected), timeout=90)
            assert seqs_and_texts(got_ws) == expected
            got_sse = [e["data"] for e in await sse.events(len(expected), timeout=90)]
            assert seqs_and_texts(got_sse) == expected
            # a viewer that joins after the restart gets the history, then live events
            async with http.ws_connect(f"{worker.url}/v1/session/{session}/stream") as late:
                frames = await ws_frames(late, len(expected) + 1)
                assert seqs_and_texts(frames[:-1]) == expected and frames[-1]["type"] == "recovered"
                await post_all(worker.url, session, ["last"])
                assert seqs_and_texts(await ws_frames(late, 1)) == [(len(expected) + 1, "last")]
            assert seqs_and_texts(await ws_frames(ws, 1)) == [(len(expected) + 1, "last")]


async def test_a_stream_that_cannot_subscribe_is_refused_with_503_and_leaves_nothing_behind(
    iso: Isolated, stack: Settings, artifacts: Path
) -> None:
    async with off_loop(private_redis(stack)) as redis_server:
        settings = dataclasses.replace(iso.settings, redis_url=redis_server.url, read_deadline_seconds=2.0)
        env = dataclasses.replace(iso, settings=settings).env()
        session = f"nofeed-{iso.tag}"
        async with (
            running(env, artifacts / "logs" / f"feed-refused-{iso.tag}.log") as worker,
            aiohttp.ClientSession() as http,
        ):
            await post_all(worker.url, session, ["stored before"])
            await wait_rows(settings.postgres_dsn, "SELECT 1 FROM session_events WHERE session_id = %s", (session,), 1)
            assert await asyncio.to_thread(redis_server.stop)
            for headers, path in (
                ({}, f"/v1/session/{session}/stream"),
                ({"Accept": "text/event-stream"}, f"/v1/session/{session}/events"),
            ):
                upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
                sent = {
                    **headers,
                    **({"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **upgrade} if not headers else {}),
                }
                async with http.get(worker.url + path, headers=sent) as resp:
                    body = await resp.json()
                    assert resp.status == 503 and body["error"]["code"] == "feed_unavailable", (path, body)
                    assert resp.headers["Retry-After"] == "1"
            _, info = await get_json(worker.url, "/v1/worker")
            assert (info["open_streams"], info["watched_sessions"]) == (0, 0), info
            # Redis back: the same stream opens and replays the session
            assert await asyncio.to_thread(redis_server.up) == "started"
            async with http.ws_connect(f"{worker.url}/v1/session/{session}/stream") as ws:
                frames = await ws_frames(ws, 2)
                assert frames[0].get("message") == "stored before" and frames[1]["type"] == "recovered", frames


async def test_a_redis_that_stops_answering_is_noticed_and_the_feed_resumes_in_full(
    iso: Isolated, stack: Settings, artifacts: Path
) -> None:
    """Redis frozen (SIGSTOP: its sockets stay open, nothing answers, as on a half-open connection): the hub's
    PING goes unanswered, it cuts the connection and reconnects; once Redis answers again the viewer gets
    every event, the ones stored while the hub was reconnecting included, once and in order."""
    async with off_loop(private_redis(stack)) as redis_server:
        settings = dataclasses.replace(iso.settings, redis_url=redis_server.url)
        env = dataclasses.replace(iso, settings=settings).env()
        session = f"frozen-{iso.tag}"
        async with (
            running(env, artifacts / "logs" / f"feed-frozen-{iso.tag}.log") as worker,
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{worker.url}/v1/session/{session}/stream") as ws,
        ):
            assert (await ws_frames(ws, 1))[0]["type"] == "recovered"
            await post_all(worker.url, session, ["before"])
            assert seqs_and_texts(await ws_frames(ws, 1)) == [(1, "before")]
            pid = await asyncio.to_thread(redis_server.ours)
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                await worker.wait_log("no answer to a PING", timeout=60)
            finally:
                os.kill(pid, signal.SIGCONT)
            after = [f"after {n}" for n in range(30)]
            await post_all(worker.url, session, after)
            got = await ws_frames(ws, len(after), timeout=90)
            assert seqs_and_texts(got) == [(n + 2, text) for n, text in enumerate(after)]
