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
