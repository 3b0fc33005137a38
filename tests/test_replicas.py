"""Two workers: a client on A receives, in order, events processed on B; resuming on B is exact."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiokafka.partitioner import DefaultPartitioner

from deploy.localstack.base import port_open
from tests.support import secrets
from tests.support.client import SseReader, get_json, post_message
from tests.support.db import query, wait_rows
from tests.support.isolation import Isolated
from tests.support.worker import ROOT, Worker, running_pair

TOTAL = 60


@pytest.fixture
async def pair(iso: Isolated, artifacts: Path) -> AsyncIterator[tuple[Worker, Worker]]:
    async with running_pair(iso.env(), artifacts / "logs", f"replica-{iso.tag}") as workers:
        yield workers


async def inbound_partitions(worker: Worker, topic: str) -> set[int]:
    _, info = await get_json(worker.url, "/v1/worker")
    return {int(tp.rsplit("[", 1)[1].rstrip("]")) for tp in info["assigned"] if tp.startswith(topic + "[")}


async def settled(a: Worker, b: Worker, topic: str, partitions: int) -> tuple[set[int], set[int]]:
    """Wait until the group has split the inbound partitions between the two workers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        on_a, on_b = await inbound_partitions(a, topic), await inbound_partitions(b, topic)
        if on_a and on_b and not on_a & on_b and len(on_a | on_b) == partitions:
            return on_a, on_b
        await asyncio.sleep(0.5)
    raise AssertionError(f"partitions never split between the workers: {on_a} / {on_b}")


def session_on(partitions: set[int], count: int) -> str:
    """A session id whose records land in one of ``partitions`` (the producer's murmur2 partitioner)."""
    partitioner = DefaultPartitioner()
    while True:
        candidate = f"replica-{uuid.uuid4().hex[:8]}"
        if partitioner(candidate.encode(), list(range(count)), list(range(count))) in partitions:
            return candidate


async def ws_viewer(url: str, seen: list[int], stop_after: int | None = None, ids: list[str] | None = None) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        while len(seen) < TOTAL:
            frame = json.loads((await ws.receive(timeout=30)).data)
            if "seq" in frame:
                seen.append(frame["seq"])
                if ids is not None:
                    ids.append(frame["event_id"])
                if stop_after is not None and len(seen) == stop_after:
                    return  # the connection drops mid-stream


async def test_events_processed_on_b_reach_a_and_resume_exactly_on_b(
    iso: Isolated, pair: tuple[Worker, Worker]
) -> None:
    a, b = pair
    settings = iso.settings
    _, on_b = await settled(a, b, iso.topic("conversation.inbound"), settings.topic_partitions)
    session = session_on(on_b, settings.topic_partitions)

    first_viewer: list[int] = []
    second_viewer: list[int] = []
    on_b_viewer: list[int] = []
    ids_a: list[str] = []
    ids_b: list[str] = []
    viewer_on_a = asyncio.create_task(ws_viewer(f"{a.url}/v1/session/{session}/stream", first_viewer, ids=ids_a))
    viewer_on_b = asyncio.create_task(ws_viewer(f"{b.url}/v1/session/{session}/stream", on_b_viewer, ids=ids_b))
    dropping = asyncio.create_task(ws_viewer(f"{a.url}/v1/session/{session}/stream", second_viewer, stop_after=20))
    await asyncio.sleep(0.5)

    async def post_all() -> None:
        for n in range(TOTAL):
            status, _ = await post_message(a.url, {"session_id": session, "message": f"m{n}"})
            assert status == 202
            await asyncio.sleep(0.02)

    posting = asyncio.create_task(post_all())
    await dropping
    # the dropped client resumes on B over SSE with the last id it saw: exactly the missed events, then live
    resumed: list[int] = []
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{b.url}/v1/session/{session}/events",
            headers={"Accept": "text/event-stream", "Last-Event-ID": str(second_viewer[-1])},
        ) as resp,
    ):
        reader = SseReader(resp)
        while len(second_viewer) + len(resumed) < TOTAL:
            (event,) = await reader.events(1, timeout=30)
            if event["id"] is not None:
                resumed.append(int(event["id"]))
    await posting
    await viewer_on_a
    await viewer_on_b

    assert first_viewer == list(range(1, TOTAL + 1))
    # two viewers of one session, on two workers, receive identical sequences
    assert on_b_viewer == first_viewer and ids_a == ids_b and len(set(ids_a)) == TOTAL
    assert second_viewer + resumed == list(range(1, TOTAL + 1))
    # the events were processed on B (the session's partition is B's), and A only delivered them
    _, info_a = await get_json(a.url, "/v1/worker")
    assert not any(tp == f"{iso.topic('conversation.inbound')}[{p}]" for tp in info_a["assigned"] for p in on_b)


def consecutive_free_ports(count: int) -> int:
    while True:
        base = random.randrange(20000, 30000)
        if not any(port_open("127.0.0.1", base + n) for n in range(count)):
            return base


def stack_status(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.localstack", "status"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("worker ")]


async def test_make_run_replicas_starts_workers_on_consecutive_ports_that_stack_status_lists(
    iso: Isolated, tmp_path: Path
) -> None:
    base = await asyncio.to_thread(consecutive_free_ports, 2)
    env = iso.env(SOMA_WEB_PORT=str(base), SOMA_STACK_DIR=str(tmp_path / "stack"))
    secrets.note(env)
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        make = await asyncio.to_thread(
            subprocess.Popen, ["make", "run", "REPLICAS=2"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = await asyncio.to_thread(stack_status, env)
            busy = [line for line in lines if " ok on " in line and not re.search(r", 0 partitions|\?", line)]
            if len(busy) == 2:
                break
            assert make.poll() is None, await asyncio.to_thread(log.read_text)
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"two workers never both held partitions: {lines}\n{log.read_text()}")
        assert [f"http://127.0.0.1:{base + n}" in line for n, line in enumerate(sorted(lines))] == [True, True]
        workers = tmp_path / "stack" / "workers"
        # each its own log and data dir
        assert await asyncio.to_thread(
            lambda: [
                ((workers / f"worker-{p}.log").stat().st_size > 0, (workers / f"{p}-data").is_dir())
                for p in (base, base + 1)
            ]
        ) == [(True, True), (True, True)]
    finally:
        os.killpg(make.pid, signal.SIGTERM)  # what Ctrl-C does to the group; the workers stop, the runner with them
        await asyncio.to_thread(make.wait, 60)
    assert await asyncio.to_thread(stack_status, env) == []
    assert "worker 2 of 2: http://127.0.0.1:" in await asyncio.to_thread(log.read_text)


RATE = 200  # messages per second, steadily, through the surviving workers
LOAD_SECONDS = 10
KILL_AFTER = 3


async def holdings(workers: list[Worker], topic: str) -> list[set[int]]:
    return [await inbound_partitions(worker, topic) for worker in workers]


async def balanced(workers: list[Worker], topic: str, partitions: int, timeout: float = 120) -> list[set[int]]:
    """Wait until ``workers`` split the inbound partitions, each holding at least one, none twice."""
    deadline = time.monotonic() + timeout
    held: list[set[int]] = []
    while time.monotonic() < deadline:
        held = await holdings(workers, topic)
        if all(held) and sum(map(len, held)) == partitions and len(set().union(*held)) == partitions:
            return held
        await asyncio.sleep(0.2)
    raise AssertionError(f"partitions never balanced between the workers: {held}")


async def follow_across_workers(
    session: str,
    urls: list[str],
    seen: list[int],
    arrivals: list[float],
    enough: asyncio.Event,
    expected: dict[str, int],
) -> None:
    """A streaming client: on the first worker while it lives, then on the next, resuming after its last seq."""
    index = 0
    async with aiohttp.ClientSession() as http:
        while not (enough.is_set() and len(seen) >= expected[session]):
            after = seen[-1] if seen else 0
            try:
                async with http.ws_connect(
                    f"{urls[index].replace('http', 'ws', 1)}/v1/session/{session}/stream?after={after}"
                ) as ws:
                    while not (enough.is_set() and len(seen) >= expected[session]):
                        try:
                            message = await ws.receive(timeout=1)
                        except TimeoutError:
                            continue
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break  # the worker went away: resume on the next one
                        frame = json.loads(message.data)
                        if "seq" in frame:
                            seen.append(frame["seq"])
                            arrivals.append(time.time())
            except aiohttp.ClientError:
                pass
            index = min(index + 1, len(urls) - 1)


async def test_three_workers_under_steady_load_lose_one_to_sigkill_then_a_fourth_joins(
    iso: Isolated, artifacts: Path
) -> None:
    settings = iso.settings
    topic = iso.topic("conversation.inbound")
    env = iso.env(SOMA_KAFKA_SESSION_TIMEOUT_SECONDS="6")
    logs = artifacts / "logs"
    workers = [await Worker(env, logs / f"trio-{iso.tag}-{name}.log").started() for name in "abc"]
    joiner = Worker(env, logs / f"trio-{iso.tag}-d.log")
    try:
        await asyncio.gather(*(worker.wait_http() for worker in workers))
        held = await balanced(workers, topic, settings.topic_partitions)
        victim, survivors = workers[2], workers[:2]
        doomed = [session_on(held[2], settings.topic_partitions) for _ in range(4)]
        sessions = doomed + [f"trio-{n}-{uuid.uuid4().hex[:6]}" for n in range(8)]

        accepted: dict[str, list[str]] = {s: [] for s in sessions}
        expected = {s: 0 for s in sessions}
        refused: dict[int, int] = {}
        load_done = asyncio.Event()
        seen: dict[str, list[int]] = {s: [] for s in doomed}
        arrivals: dict[str, list[float]] = {s: [] for s in doomed}
        viewers = [
            asyncio.create_task(
                follow_across_workers(
                    s, [victim.url, *(w.url for w in survivors)], seen[s], arrivals[s], load_done, expected
                )
            )
            for s in doomed
        ]
        http = aiohttp.ClientSession()
        gate = asyncio.Semaphore(64)

        async def post(n: int) -> None:
            session = sessions[n % len(sessions)]
            async with (
                gate,
                http.post(
                    f"{survivors[n % 2].url}/v1/session/message", json={"session_id": session, "message": f"m{n}"}
                ) as resp,
            ):
                body = await resp.json()
                if resp.status == 202:
                    accepted[session].append(body["event_id"])
                    expected[session] += 1
                else:
                    assert resp.status == 503 and body["error"]["code"], body  # refused clearly, never a 500
                    refused[resp.status] = refused.get(resp.status, 0) + 1

        began = time.monotonic()
        posts = []
        killed_at = 0.0
        for n in range(RATE * LOAD_SECONDS):
            ahead = began + n / RATE - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            if not killed_at and time.monotonic() - began >= KILL_AFTER:
                killed_at = time.time()
                await victim.killed()
            posts.append(asyncio.create_task(post(n)))
        await asyncio.gather(*posts)
        await http.close()
        load_done.set()

        # every accepted message stored exactly once, seq gap-free, in every session
        total = sum(map(len, accepted.values()))
        rows = await wait_rows(
            settings.postgres_dsn,
            "SELECT session_id, seq, event_id::text AS event_id FROM session_events ORDER BY session_id, seq",
            (),
            total,
            timeout=120,
        )
        stored: dict[str, list[tuple[int, str]]] = {}
        for row in rows:
            stored.setdefault(row["session_id"], []).append((row["seq"], row["event_id"]))
        for session in sessions:
            assert [seq for seq, _ in stored[session]] == list(range(1, len(accepted[session]) + 1)), session
            assert sorted(event_id for _, event_id in stored[session]) == sorted(accepted[session]), session
        assert len(rows) == total

        # the clients of the killed worker resumed on another: every seq once, in order
        await asyncio.wait_for(asyncio.gather(*viewers), 120)
        for session in doomed:
            assert seen[session] == list(range(1, len(accepted[session]) + 1)), session

        # processing of the killed worker's partition resumed on a survivor: the first row stored there after
        (resumed,) = await asyncio.to_thread(
            query,
            settings.postgres_dsn,
            "SELECT extract(epoch FROM min(stored_at)) AS at FROM session_events "
            "WHERE source_topic = %s AND source_partition = ANY(%s) AND stored_at > to_timestamp(%s)",
            (topic, sorted(held[2]), killed_at),
        )
        # a fourth worker joins: it receives partitions and the three live workers balance
        joined_at = time.time()
        await joiner.started()
        await joiner.wait_http()
        after_join = await balanced([*survivors, joiner], topic, settings.topic_partitions)
        balanced_at = time.time()
        figures = (
            f"{total} messages accepted at {RATE}/s ({sum(refused.values())} refused with 503), "
            f"kill -> processing resumed on a survivor: {float(resumed['at']) - killed_at:.1f} s "
            f"(session timeout 6 s); join -> balanced {after_join}: {balanced_at - joined_at:.1f} s"
        )
        print(figures)
        await asyncio.to_thread((logs / f"trio-{iso.tag}-figures.txt").write_text, figures + "\n")
    finally:
        for worker in [*workers, joiner]:
            if worker.proc is not None:
                await worker.stopped()
