"""The worker on a 3-broker KRaft cluster: its topics have 3 replicas (2 in sync), and a partition leader
SIGKILLed under steady HTTP load, then restarted, loses nothing.

A private cluster (tests/support/private.py); the worker creates its topics with SOMA_TOPIC_REPLICATION=3 and
SOMA_TOPIC_MIN_INSYNC_REPLICAS=2. The stall the leader change causes is measured and written to
``artifacts/kafka-cluster-stall.json`` (and printed), never asserted on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from app.settings import Settings
from app.topics import SESSION_TOPICS, dead_letter
from deploy.localstack.base import WrongService, pid_alive, port_open
from deploy.localstack.kafka_cluster import KafkaCluster
from tests.support.db import query
from tests.support.isolation import Isolated
from tests.support.kafka import end_offsets, topic_configs
from tests.support.private import free_ports_in_a_row
from tests.support.worker import ROOT, Worker, running

SESSIONS = 10
PER_SESSION_PER_SECOND = 7.0  # 70 POSTs/s in all
MAX_PER_SESSION = 2_000  # the load's hard bound in count (it is stopped well before)
LOAD_DEADLINE_SECONDS = 150.0  # and in time
TABLES = ("session_state", "tool_runs")
# what a POST may be refused with while the partition has no leader: the broker did not ack in time, too many
# waiting for it, or storage too far behind; each is a 503 with a JSON error code
REFUSALS = {"enqueue_failed", "overloaded", "storage_behind"}
STORED = """
    SELECT session_id, seq, event_id, payload->>'message' AS message, source_partition,
           extract(epoch FROM stored_at)::float8 AS stored_at
    FROM session_events ORDER BY id
"""


def stack_cli(verb: str, env: dict[str, str]) -> dict[str, str]:
    """``python -m deploy.localstack <verb>``: its output, by component (a cluster's node lines under kafka)."""
    done = subprocess.run(
        [sys.executable, "-m", "deploy.localstack", verb],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found: dict[str, str] = {}
    name = ""
    for line in done.stdout.splitlines():
        if line and not line[0].isspace():
            name = line.split()[0]
        found[name] = found.get(name, "") + line + "\n"
    return found


@dataclasses.dataclass
class StackCluster:
    env: dict[str, str]
    port: int
    home: Path
    up: dict[str, str]


@pytest.fixture(scope="module")
def stack_cluster(stack: Settings) -> Iterator[StackCluster]:
    """The cluster of this module, started the way an operator does (``SOMA_KAFKA_BROKERS=3 make stack-up``) in
    a stack dir of its own; Redis and PostgreSQL are the shared ones (reused). ``stack-down`` at the end must
    stop every node and free every port (checked here, after the module's tests)."""
    home = stack.stack_dir / "test-instances" / f"stack-cluster-{uuid.uuid4().hex[:8]}"
    port = free_ports_in_a_row(9)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOMA_")}
    env.update(
        SOMA_KAFKA_BROKERS="3",
        SOMA_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}",
        SOMA_STACK_DIR=str(home),
        SOMA_CACHE_DIR=str(stack.cache_dir),
        SOMA_REDIS_URL=stack.redis_url,
        SOMA_POSTGRES_DSN=stack.postgres_dsn,
        # three JVMs share the machine with the rest of the suite
        KAFKA_HEAP_OPTS="-Xms128m -Xmx512m",
    )
    try:
        started = StackCluster(env, port, home, stack_cli("up", env))
        pids = [int((home / "kafka-cluster" / f"node-{n}" / "kafka.pid").read_text().split()[0]) for n in (1, 2, 3)]
        yield started
        assert stack_cli("down", env)["kafka"].rstrip().endswith("stopped")
        assert not any(pid_alive(pid) for pid in pids)
        assert not any(port_open("127.0.0.1", port + n) for n in range(9))
    finally:
        subprocess.run([sys.executable, "-m", "deploy.localstack", "down"], cwd=ROOT, env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_the_stack_starts_and_reports_a_cluster_of_3(stack_cluster: StackCluster) -> None:
    """SOMA_KAFKA_BROKERS=3: three nodes on consecutive port groups, each with its home, log and pid file."""
    port, home, up = stack_cluster.port, stack_cluster.home, stack_cluster.up
    assert f"kafka     started (3 nodes) on 127.0.0.1:{port}" in up["kafka"], up
    assert "reused" in up["redis"] and "reused" in up["postgres"], up
    pids = [int((home / "kafka-cluster" / f"node-{n}" / "kafka.pid").read_text().split()[0]) for n in (1, 2, 3)]
    status = stack_cli("status", stack_cluster.env)["kafka"]
    for n, pid in enumerate(pids, start=1):
        assert f"node {n} on 127.0.0.1:{port + 3 * (n - 1)}: up (started by the stack, pid {pid}" in status, status
    assert "running on" in stack_cli("up", stack_cluster.env)["kafka"]


def test_a_cluster_is_not_started_where_a_single_broker_answers(stack: Settings, tmp_path: Path) -> None:
    """The shared stack's broker holds the first node's port: a clear error, and nothing started."""
    cluster = KafkaCluster.from_bootstrap(stack.kafka_bootstrap, tmp_path / "kafka-cluster", stack.cache_dir)
    with pytest.raises(WrongService, match=f"{stack.kafka_bootstrap.split(',')[0]} already answer"):
        cluster.up()
    assert not any(node.pid_path.exists() for node in cluster.nodes)


@pytest.fixture(scope="module")
def cluster(stack: Settings, stack_cluster: StackCluster) -> KafkaCluster:
    return KafkaCluster.from_bootstrap(
        f"127.0.0.1:{stack_cluster.port}", stack_cluster.home / "kafka-cluster", stack.cache_dir
    )


@pytest.fixture(scope="module")
def settings(iso_module: Isolated, cluster: KafkaCluster) -> Settings:
    return dataclasses.replace(
        iso_module.settings, kafka_bootstrap=cluster.bootstrap, topic_replication=3, topic_min_insync_replicas=2
    )


@pytest.fixture(scope="module")
async def worker(iso_module: Isolated, settings: Settings, artifacts: Path) -> AsyncIterator[Worker]:
    env = dataclasses.replace(iso_module, settings=settings).env()
    async with running(env, artifacts / "logs" / f"kafka-cluster-{iso_module.tag}.log") as worker:
        yield worker


async def describe(bootstrap: str, topics: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each topic's partitions as the cluster's metadata has them: leader, replicas, isr."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        found = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {t["topic"]: sorted(t["partitions"], key=lambda p: p["partition"]) for t in found if t["error_code"] == 0}


def session_topics(settings: Settings) -> list[str]:
    return [settings.topic(name) for base in SESSION_TOPICS for name in (base, dead_letter(base))]


async def wait_for(what: str, check: Any, timeout: float = 120.0) -> Any:
    """Await ``check()`` until it returns something true; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.3)


async def configs_of(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    """The topics' configurations, once the cluster describes every one (a just-created topic may come back
    empty from the broker asked first)."""

    async def described() -> dict[str, dict[str, str]] | None:
        found = await topic_configs(bootstrap, topics)
        return found if all(found.get(topic) for topic in topics) else None

    result: dict[str, dict[str, str]] = await wait_for(f"the configuration of {topics}", described)
    return result


async def worker_topics(settings: Settings, worker: Worker) -> dict[str, list[dict[str, Any]]]:
    """The worker's session topics, once it has created every one of them."""
    topics = session_topics(settings)

    async def created() -> dict[str, list[dict[str, Any]]] | None:
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        found = await describe(settings.kafka_bootstrap, topics)
        return found if len(found) == len(topics) else None

    result: dict[str, list[dict[str, Any]]] = await wait_for("the worker's topics", created)
    return result


async def test_the_worker_creates_its_topics_with_3_replicas_and_2_in_sync(
    worker: Worker, settings: Settings, cluster: KafkaCluster
) -> None:
    described = await worker_topics(settings, worker)
    configs = await configs_of(settings.kafka_bootstrap, list(described))
    for topic, partitions in described.items():
        assert len(partitions) == settings.topic_partitions, topic
        for partition in partitions:
            assert sorted(partition["replicas"]) == [1, 2, 3], (topic, partition)
        assert configs[topic]["min.insync.replicas"] == "2", topic
    # the tables' changelogs, created by faust (as its consumer starts) with the same replication
    changelogs = [f"{settings.app_id}-{table}-changelog" for table in TABLES]

    async def created() -> dict[str, list[dict[str, Any]]] | None:
        found = await describe(settings.kafka_bootstrap, changelogs)
        return found if len(found) == len(changelogs) else None

    for topic, partitions in (await wait_for("the tables' changelogs", created)).items():
        assert all(sorted(p["replicas"]) == [1, 2, 3] for p in partitions), (topic, partitions)

    # the cluster's own: the group's offsets (made when the worker joined its group) at 3 replicas, 2 in sync
    async def offsets_topic() -> list[dict[str, Any]] | None:
        return (await describe(settings.kafka_bootstrap, ["__consumer_offsets"])).get("__consumer_offsets")

    offsets = await wait_for("the group's offsets topic", offsets_topic)
    assert all(sorted(p["replicas"]) == [1, 2, 3] for p in offsets), offsets
    configs = await configs_of(settings.kafka_bootstrap, ["__consumer_offsets"])
    assert configs["__consumer_offsets"]["min.insync.replicas"] == "2"


@dataclasses.dataclass
class Post:
    session: str
    text: str
    began: float  # wall clock (time.time), comparable with PostgreSQL's stored_at
    status: int = 0
    code: str | None = None
    answered: float = 0.0
    error: str | None = None


class Load:
    """SESSIONS clients, each posting its session's messages one after another at a steady pace, until stopped."""

    def __init__(self, worker: Worker, tag: str) -> None:
        self.worker = worker
        self.sessions = [f"cluster-{tag}-{n}" for n in range(SESSIONS)]
        self.posts: list[Post] = []
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
            await asyncio.gather(*(self._client(http, session) for session in self.sessions))

    async def _client(self, http: aiohttp.ClientSession, session: str) -> None:
        began = time.monotonic()
        for n in range(MAX_PER_SESSION):
            if self.stopping.is_set() or time.monotonic() - began > LOAD_DEADLINE_SECONDS:
                break
            # a steady pace from each POST's start; one answered late is not made up for by a burst after it
            posting = time.monotonic()
            await self.post(http, session, f"{session} m{n}")
            ahead = posting + 1 / PER_SESSION_PER_SECOND - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        # a last message each, accepted (retried while refused): any earlier one that was refused yet reached the
        # broker lies before it in the partition, so once it is stored, every one that will ever be stored is
        deadline = time.monotonic() + 60
        while (await self.post(http, session, f"{session} last {uuid.uuid4().hex[:6]}")).status != 202:
            assert time.monotonic() < deadline, f"{session}: no POST accepted for 60 s after the load"
            await asyncio.sleep(0.5)

    async def post(self, http: aiohttp.ClientSession, session: str, text: str) -> Post:
        post = Post(session, text, time.time())
        self.posts.append(post)
        try:
            async with http.post(
                self.worker.url + "/v1/session/message", json={"session_id": session, "message": text}
            ) as resp:
                post.status = resp.status
                body = await resp.json()
                if resp.status != 202:
                    post.code = body["error"]["code"]
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            post.error = f"{type(exc).__name__}: {exc}"
        post.answered = time.time()
        return post

    def accepted(self) -> list[Post]:
        return [p for p in self.posts if p.status == 202]


async def stored(dsn: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(query, dsn, STORED)


async def busiest_partition(settings: Settings) -> int:
    rows = await stored(settings.postgres_dsn)
    return Counter(row["source_partition"] for row in rows).most_common(1)[0][0]


def longest_gap(times: list[float], since: float, until: float) -> tuple[float, float]:
    """The longest interval between consecutive ``times`` that began within [since, until]: (length, start)."""
    gaps = ((b - a, a) for a, b in itertools.pairwise(sorted(times)) if since <= a <= until)
    return max(gaps, default=(0.0, since))


@pytest.mark.timeout(300)
async def test_a_partition_leader_killed_under_load_loses_nothing(
    worker: Worker, settings: Settings, cluster: KafkaCluster, iso_module: Isolated, artifacts: Path
) -> None:
    inbound = settings.topic("conversation.inbound")
    await worker_topics(settings, worker)
    load = Load(worker, iso_module.tag)
    loading = asyncio.create_task(load.run())
    try:
        # steady load first: stores happening on every partition
        await wait_for("200 stored events", lambda: _at_least(settings, 200), timeout=120)
        partition = await busiest_partition(settings)
        leader = (await describe(settings.kafka_bootstrap, [inbound]))[inbound][partition]["leader"]
        node = cluster.node(leader)
        pid = await asyncio.to_thread(node.ours)
        assert pid is not None
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        posts_before_kill = len(load.posts)

        # the load goes on; a new leader takes over once the controller has fenced the dead broker
        async def stored_after_kill() -> bool:
            texts = {p.text for p in load.posts[posts_before_kill:]}
            return any(row["message"] in texts for row in await stored(settings.postgres_dsn))

        await wait_for("an event posted after the kill stored", stored_after_kill, timeout=120)
        new_leader = (await describe(settings.kafka_bootstrap, [inbound]))[inbound][partition]["leader"]
        # the restarted node catches up and is back in sync on every partition of the worker's topics
        restarted_at = time.time()
        assert await asyncio.to_thread(node.up) == "started"
        answered_at = time.time()

        async def back_in_sync() -> bool:
            described = await describe(settings.kafka_bootstrap, session_topics(settings))
            return all(leader in p["isr"] for partitions in described.values() for p in partitions)

        await wait_for(f"node {leader} back in the ISR of every partition", back_in_sync, timeout=120)
        rejoined_at = time.time()
        posts_at_rejoin = len(load.posts)

        async def load_went_on() -> bool:
            return len(load.posts) >= posts_at_rejoin + 150

        await wait_for("the load going on after the rejoin", load_went_on, timeout=120)
    finally:
        load.stopping.set()
        await loading

    # every POST answered 202, or 503 with a JSON error code saying why; none failed otherwise
    assert [p.error for p in load.posts if p.error] == []
    statuses = Counter((p.status, p.code) for p in load.posts)
    assert all(status == 202 or (status == 503 and code in REFUSALS) for status, code in statuses), statuses
    accepted = load.accepted()
    assert any(p.began < killed_at for p in accepted) and any(p.began > rejoined_at for p in accepted)

    # every accepted message stored exactly once; a refused one at most once; each session's seq 1..n in the
    # order its messages were posted
    accepted_texts = {p.text for p in accepted}

    async def all_accepted_stored() -> list[dict[str, Any]] | None:
        rows = await stored(settings.postgres_dsn)
        return rows if accepted_texts <= {row["message"] for row in rows} else None

    rows: list[dict[str, Any]] = await wait_for("every accepted message stored", all_accepted_stored, timeout=120)
    rows_done_at = max(row["stored_at"] for row in rows)
    # the stall, measured (not asserted): stores by PostgreSQL's clock, answers by the client's
    stores = [row["stored_at"] for row in rows]
    after_kill = {p.text for p in load.posts[posts_before_kill:]}
    first_store = min(row["stored_at"] for row in rows if row["message"] in after_kill)
    store_gap, store_gap_at = longest_gap(stores, killed_at - 5, restarted_at)
    answers = [p.answered for p in accepted]
    answer_gap, answer_gap_at = longest_gap(answers, killed_at - 5, restarted_at)
    report = {
        "killed_node": leader,
        "partition": partition,
        "new_leader": new_leader,
        "posts": len(load.posts),
        "answers": {f"{status} {code or ''}".strip(): n for (status, code), n in sorted(statuses.items())},
        "stored": len(rows),
        "kill_to_first_store_of_a_later_post_s": round(first_store - killed_at, 2),
        "longest_gap_between_stores_s": round(store_gap, 2),
        "store_gap_began_after_kill_s": round(store_gap_at - killed_at, 2),
        "longest_gap_between_202s_s": round(answer_gap, 2),
        "202_gap_began_after_kill_s": round(answer_gap_at - killed_at, 2),
        "slowest_202_s": round(max(p.answered - p.began for p in accepted), 2),
        "longest_gap_between_stores_from_restart_s": round(longest_gap(stores, restarted_at, rows_done_at)[0], 2),
        "restart_to_answering_s": round(answered_at - restarted_at, 2),
        "restart_to_back_in_sync_s": round(rejoined_at - restarted_at, 2),
    }
    text = json.dumps(report, indent=2)
    print(f"\nleader change under load on a 3-broker cluster:\n{text}")
    await asyncio.to_thread((artifacts / "kafka-cluster-stall.json").write_text, text + "\n")
    # every POST and every store, relative to the kill, to see where the stall was
    partition_of = {row["session_id"]: row["source_partition"] for row in rows}
    timeline = [
        {
            "session": p.session,
            "partition": partition_of.get(p.session),
            "posted": round(p.began - killed_at, 3),
            "answered": round(p.answered - killed_at, 3),
            "status": p.status,
            "code": p.code,
        }
        for p in load.posts
    ] + [{"stored": round(row["stored_at"] - killed_at, 3), "partition": row["source_partition"]} for row in rows]
    await asyncio.to_thread(
        (artifacts / "kafka-cluster-timeline.jsonl").write_text, "".join(json.dumps(t) + "\n" for t in timeline)
    )

    posted_order = {p.text: n for n, p in enumerate(load.posts)}
    assert len({row["event_id"] for row in rows}) == len(rows)
    assert len({row["message"] for row in rows}) == len(rows), "a message is stored twice"
    assert {row["message"] for row in rows} <= set(posted_order), "a stored message nobody posted"
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_session[row["session_id"]].append(row)
    for session, session_rows in by_session.items():
        session_rows.sort(key=lambda row: row["seq"])
        assert [row["seq"] for row in session_rows] == list(range(1, len(session_rows) + 1)), f"{session}: gaps"
        order = [posted_order[row["message"]] for row in session_rows]
        assert order == sorted(order), f"{session}: stored out of the order it was posted in"
    for name in SESSION_TOPICS:
        assert await end_offsets(settings.kafka_bootstrap, settings.topic(dead_letter(name))) == 0, name
    assert worker.proc is not None and worker.proc.poll() is None


async def _at_least(settings: Settings, count: int) -> bool:
    return len(await stored(settings.postgres_dsn)) >= count
