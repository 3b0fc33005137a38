"""The operations commands as an operator runs them: ``faust -A app <command>`` against a real worker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deploy.localstack.base import free_port
from tests.support import events
from tests.support.client import get_json, post_message
from tests.support.db import wait_rows
from tests.support.isolation import RUN_PREFIX, Isolated, admin_execute, with_database
from tests.support.kafka import create_topic, end_offsets, produce, read_topic, topic_configs, wait_consumed
from tests.support.worker import FAUST, ROOT, Worker, running


@pytest.fixture(scope="module")
async def worker(iso_module: Isolated, artifacts: Path) -> AsyncIterator[Worker]:
    # topic settings the worker creates its topics with (test_topics_are_created_with_the_topic_settings)
    env = iso_module.env(SOMA_DLQ_RETENTION_HOURS="48")
    async with running(env, artifacts / "logs" / f"cli-{iso_module.tag}.log") as worker:
        yield worker


async def test_topics_are_created_with_the_topic_settings(worker: Worker, iso_module: Isolated) -> None:
    settings = iso_module.settings
    inbound, letters = iso_module.topic("conversation.inbound"), iso_module.topic("conversation.inbound.dlq")
    deadline = time.monotonic() + 60
    while True:  # the worker creates its topics as its agents start, after its web server answers
        configs = await topic_configs(settings.kafka_bootstrap, [inbound, letters])
        if all(configs.get(topic) for topic in (inbound, letters)) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert configs[letters]["retention.ms"] == str(48 * 3_600_000)
    assert configs[inbound]["retention.ms"] != str(48 * 3_600_000)  # the broker's default for the topic itself
    # min.insync.replicas (SOMA_TOPIC_MIN_INSYNC_REPLICAS) needs replicas: tests/test_kafka_cluster.py


async def faust(iso: Isolated, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(FAUST), "-A", "app", *args, env=iso.env(), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def send(worker: Worker, session: str, texts: list[str]) -> None:
    for text in texts:
        status, answer = await post_message(worker.url, {"session_id": session, "message": text})
        assert status == 202, answer


async def test_follow_session_prints_history_then_live_events_without_gap_or_duplicate(
    worker: Worker, iso_module: Isolated
) -> None:
    session = f"cli-{uuid.uuid4().hex[:8]}"
    await send(worker, session, [f"m{n}" for n in range(1, 6)])
    await wait_rows(
        iso_module.settings.postgres_dsn, "SELECT 1 FROM session_events WHERE session_id = %s", (session,), 5
    )

    code, out, err = await faust(iso_module, "follow-session", session, "--url", worker.url, "--format", "json")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["seq"], e["message"]) for e in events] == [(n, f"m{n}") for n in range(1, 6)]

    code, out, _ = await faust(
        iso_module, "follow-session", session, "--url", worker.url, "--after", "2", "--limit", "2"
    )
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["3", "4"]
    assert "user.message" in out and "m3" in out

    # --follow: the stored five, then two sent while it runs; it stops at --limit
    proc = await asyncio.create_subprocess_exec(
        str(FAUST), "-A", "app", "follow-session", session, "--url", worker.url, "--format", "json", "--follow",
        "--limit", "7", env=iso_module.env(), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    first = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 60)) for _ in range(5)]
    await send(worker, session, ["live 6", "live 7"])
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    live = [json.loads(line) for line in out.decode().splitlines()]
    assert [e["seq"] for e in first + live] == list(range(1, 8))
    assert [e["message"] for e in live] == ["live 6", "live 7"]


@pytest.mark.parametrize(
    ("args", "expected_code", "says"),
    [
        (["--format", "xml"], 2, "--format must be text or json"),
        (["--after", "-1"], 2, "--after and --limit must be >= 0"),
        (["--url", "http://127.0.0.1:{free}"], 2, "cannot reach"),
    ],
)
async def test_follow_session_refuses_bad_arguments_in_one_line(
    worker: Worker, iso_module: Isolated, args: list[str], expected_code: int, says: str
) -> None:
    args = [a.replace("{free}", str(free_port())) for a in args]
    if "--url" not in args:
        args += ["--url", worker.url]
    code, out, err = await faust(iso_module, "follow-session", "some-session", *args)
    assert code == expected_code, (out, err)
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


async def test_follow_session_of_an_unknown_session_exits_1(worker: Worker, iso_module: Isolated) -> None:
    code, _, err = await faust(iso_module, "follow-session", f"none-{uuid.uuid4().hex[:6]}", "--url", worker.url)
    assert code == 1 and "404 session_not_found" in err and "Traceback" not in err, err


async def test_dlq_list_and_show_the_dead_letters_with_their_reason(worker: Worker, iso_module: Isolated) -> None:
    settings = iso_module.settings
    topic = iso_module.topic("conversation.inbound")
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    session = f"dlq-{uuid.uuid4().hex[:6]}"
    await produce(settings.kafka_bootstrap, topic, [(session.encode(), b"{not json at all", [])])
    await read_topic(settings.kafka_bootstrap, iso_module.topic("conversation.inbound.dlq"), expect=1, timeout=60)

    code, out, err = await faust(iso_module, "dlq", "list", "--format", "json")
    assert code == 0, err
    (letter,) = [json.loads(line) for line in out.splitlines() if session in line]
    assert letter["error_class"] == "json.decoder.JSONDecodeError"
    assert (letter["source_topic"], letter["value"], letter["attempts"]) == (topic, "{not json at all", 1)

    code, out, _ = await faust(iso_module, "dlq", "list", "--topic", "conversation.inbound")
    assert code == 0 and "JSONDecodeError" in out and "attempts=1" in out and f"from {topic}[" in out
    code, out, _ = await faust(iso_module, "dlq", "list", "--error-class", "NoSuchError")
    assert (code, out) == (0, "")
    code, out, _ = await faust(iso_module, "dlq", "list", "--since", "2999-01-01T00:00:00Z")
    assert (code, out) == (0, "")

    place = [letter["dlq_topic"], str(letter["dlq_partition"]), str(letter["dlq_offset"])]
    code, out, err = await faust(iso_module, "dlq", "show", *place)
    assert code == 0, err
    assert json.loads(out)["stacktrace"].startswith("Traceback")
    code, _, err = await faust(iso_module, "dlq", "show", place[0], place[1], "999999")
    assert code == 1 and "no dead letter at" in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["list", "--since", "yesterday"], "is not an ISO 8601 time"),
        (["list", "--topic", "nope"], "unknown topic 'nope'"),
        (["show", "x"], "usage: dlq show TOPIC PARTITION OFFSET"),
        (["redo"], "unknown action 'redo'"),
        (["list", "--broker-down"], "cannot reach the broker at 127.0.0.1:"),
    ],
)
async def test_dlq_refuses_bad_arguments_in_one_line(iso_module: Isolated, args: list[str], says: str) -> None:
    if args == ["list", "--broker-down"]:
        down = dataclasses.replace(iso_module.settings, kafka_bootstrap=f"127.0.0.1:{free_port()}")
        iso_module = dataclasses.replace(iso_module, settings=down)
        args = ["list"]
    code, _, err = await faust(iso_module, "dlq", *args)
    assert code == 2 and says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


async def test_dlq_redrive_stores_a_fixed_event_once_and_returns_a_failing_one_with_its_attempts_raised(
    iso: Isolated, artifacts: Path
) -> None:
    settings = iso.settings
    inbound, letters = iso.topic("conversation.inbound"), iso.topic("conversation.inbound.dlq")
    big, poison = f"big-{uuid.uuid4().hex[:6]}", f"poison-{uuid.uuid4().hex[:6]}"
    large = events.message(big, "x" * 2000)
    log = artifacts / "logs" / f"cli-redrive-{iso.tag}.log"
    # a worker whose record size limit is too small for the first event: both records are dead-lettered
    async with running(iso.env(SOMA_MAX_EVENT_BYTES="1024"), log):
        await produce(settings.kafka_bootstrap, inbound, [events.record(large), (poison.encode(), b"{oops", [])])
        await read_topic(settings.kafka_bootstrap, letters, expect=2, timeout=60)
    code, out, err = await faust(iso, "dlq", "list", "--format", "json")
    assert code == 0, err
    first = {doc["key"]: doc for doc in map(json.loads, out.splitlines())}
    assert first[big]["error_class"] == "agents.boundary.EventTooLarge" and first[poison]["attempts"] == 1

    # the limit raised (the fix), a worker redrives: --dry-run first, which sends nothing
    async with running(iso.env(), log) as worker:
        before = await end_offsets(settings.kafka_bootstrap, inbound)
        code, out, err = await faust(iso, "dlq", "redrive", "--dry-run")
        assert code == 0, err
        assert out.count("would redrive ") == 2 and out.endswith("dry run: 2 dead letter(s) would be republished\n")
        assert await end_offsets(settings.kafka_bootstrap, inbound) == before

        for _ in range(2):  # twice: the store keeps the event once
            code, out, err = await faust(iso, "dlq", "redrive", "--error-class", "EventTooLarge", "--rate", "50")
            assert (code, err, out) == (0, "", f"redriven 1 dead letter(s) to their topics ({inbound}: 1)\n")
        await wait_consumed(settings.kafka_bootstrap, iso.settings.app_id, inbound)
        rows = await wait_rows(
            settings.postgres_dsn, "SELECT seq, event_id FROM session_events WHERE session_id = %s", (big,), 1
        )
        assert [(r["seq"], str(r["event_id"])) for r in rows] == [(1, large["event_id"])]
        status, history = await get_json(worker.url, f"/v1/session/{big}/events")
        assert status == 200 and [e["message"] for e in history["events"]] == ["x" * 2000]

        place = [first[poison]["dlq_topic"], str(first[poison]["dlq_partition"]), str(first[poison]["dlq_offset"])]
        code, out, err = await faust(iso, "dlq", "redrive", *place)
        assert code == 0, err
        await read_topic(settings.kafka_bootstrap, letters, expect=3, timeout=60)
    code, out, _ = await faust(iso, "dlq", "list", "--format", "json", "--error-class", "JSONDecodeError")
    again = [json.loads(line) for line in out.splitlines()]
    assert [doc["attempts"] for doc in again] == [1, 2]  # the first letter stays; its redrive failed once more
    assert again[1]["first_failure"] == first[poison]["first_failure"] and again[1]["value"] == "{oops"
    assert again[1]["source_offset"] > first[poison]["source_offset"]
    code, _, err = await faust(iso, "dlq", "redrive", place[0], place[1], "999999")
    assert code == 1 and "no dead letter at" in err


async def test_replay_of_thousands_of_stored_events_adds_no_rows(worker: Worker, iso_module: Isolated) -> None:
    settings = iso_module.settings
    inbound = iso_module.topic("conversation.inbound")
    sessions = [f"replay-{n}-{uuid.uuid4().hex[:6]}" for n in range(30)]
    records = [events.record(events.message(s, f"m{n}")) for n in range(1, 101) for s in sessions]
    await produce(settings.kafka_bootstrap, inbound, records)
    count = "SELECT session_id, seq FROM session_events WHERE session_id LIKE 'replay-%%' ORDER BY session_id, seq"
    await wait_rows(settings.postgres_dsn, count, (), len(records), timeout=120)
    await wait_consumed(settings.kafka_bootstrap, settings.app_id, inbound)
    every = await end_offsets(settings.kafka_bootstrap, inbound)

    code, out, err = await faust(iso_module, "replay", "conversation.inbound", "--partition", "1", "--from-offset",
                                 "10", "--to-offset", "25", "--dry-run")  # fmt: skip
    assert (code, err) == (
        0,
        "",
    ) and out == f"dry run: would copy 15 record(s) from {inbound} [1] 10..25 to {inbound}\n"
    assert await end_offsets(settings.kafka_bootstrap, inbound) == every

    code, out, err = await faust(iso_module, "replay", "conversation.inbound")
    assert code == 0, err
    assert out.startswith(f"replayed {every} record(s) from {inbound} [0] 0..")
    assert await end_offsets(settings.kafka_bootstrap, inbound) == 2 * every  # copied, not chased
    await wait_consumed(settings.kafka_bootstrap, settings.app_id, inbound, timeout=120)
    rows = await wait_rows(settings.postgres_dsn, count, (), len(records))
    assert len(rows) == len(records)  # the store kept each event once
    by_session: dict[str, list[int]] = {}
    for row in rows:
        by_session.setdefault(row["session_id"], []).append(row["seq"])
    assert all(seqs == list(range(1, 101)) for seqs in by_session.values()) and len(by_session) == 30


async def test_replay_from_a_time_takes_the_records_written_since(worker: Worker, iso_module: Isolated) -> None:
    settings = iso_module.settings
    topic = iso_module.topic("tool.results")  # a topic of its own in this module: only these records are in it
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    await produce(settings.kafka_bootstrap, topic, [(b"k", b"before", [])] * 5)
    since = datetime.now(UTC).isoformat()  # after the first five were acked, before the next seven are sent
    await produce(settings.kafka_bootstrap, topic, [(b"k", b"after", [])] * 7)
    code, out, err = await faust(iso_module, "replay", "tool.results", "--from-time", since, "--dry-run")
    assert (code, err) == (0, ""), err
    assert out.startswith(f"dry run: would copy 7 record(s) from {topic} "), out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nope"], "unknown topic 'nope'"),
        (["conversation.inbound", "--partition", "7"], "has no partition 7"),
        (["conversation.inbound", "--from-offset", "0"], "name it with --partition"),
        (["conversation.inbound", "--partition", "0", "--from-offset", "99999999"], "is out of range for"),
        (["conversation.inbound", "--from-time", "last week"], "--from-time 'last week' is not an ISO 8601 time"),
        (["conversation.inbound", "--from-offset", "1", "--from-time", "2026-01-01"], "not both"),
        (["conversation.inbound", "--to", "elsewhere"], "unknown topic 'elsewhere'"),
        (["conversation.inbound", "--broker-down"], "cannot reach the broker at 127.0.0.1:"),
    ],
)
async def test_replay_refuses_bad_arguments_in_one_line(
    worker: Worker, iso_module: Isolated, args: list[str], says: str
) -> None:
    if "--broker-down" in args:
        down = dataclasses.replace(iso_module.settings, kafka_bootstrap=f"127.0.0.1:{free_port()}")
        iso_module = dataclasses.replace(iso_module, settings=down)
        args = args[:1]
    code, _, err = await faust(iso_module, "replay", *args)
    assert code == 2 and says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("route", ["--http", "--direct"])
async def test_send_message_waits_until_the_message_is_stored(worker: Worker, iso_module: Isolated, route: str) -> None:
    session = f"send-{uuid.uuid4().hex[:6]}"
    await send(worker, session, ["an earlier one"])  # the command watches from the head: the old event is no answer
    code, out, err = await faust(
        iso_module, "send-message", "hello from the command line", "--session", session, "--url", worker.url, route
    )
    assert code == 0, err
    sent, stored = out.splitlines()
    assert sent.startswith("sent ") and sent.endswith(f"to session {session}")
    assert stored == "stored as seq 2"  # same key, same partition: after the earlier one
    rows = await wait_rows(
        iso_module.settings.postgres_dsn,
        "SELECT payload->>'message' AS message FROM session_events WHERE session_id = %s ORDER BY seq",
        (session,),
        2,
    )
    assert sorted(row["message"] for row in rows) == ["an earlier one", "hello from the command line"]


async def test_send_message_reports_a_reply_that_does_not_come(worker: Worker, iso_module: Isolated) -> None:
    # no responder runs yet (issue 14): the message is stored, the reply does not come within the timeout
    code, out, err = await faust(
        iso_module, "send-message", "anyone there?", "--url", worker.url, "--wait-for", "reply", "--timeout", "5"
    )
    assert code == 1, (out, err)
    assert "stored as seq 1" in out and "not answered within 5 s" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["   "], "the message must not be empty"),
        (["hi", "--wait-for", "forever"], "--wait-for must be stored or reply"),
        (["hi", "--url", "http://127.0.0.1:{free}"], "cannot reach http://127.0.0.1:"),
    ],
)
async def test_send_message_refuses_bad_arguments_in_one_line(iso_module: Isolated, args: list[str], says: str) -> None:
    args = [a.replace("{free}", str(free_port())) for a in args]
    code, _, err = await faust(iso_module, "send-message", *args)
    assert code == 2 and says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


async def test_migrate_applies_rolls_back_and_says_how_many(iso_module: Isolated) -> None:
    stack = iso_module.settings
    name = f"{RUN_PREFIX}cli_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(admin_execute, stack.postgres_dsn, f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(stack.postgres_dsn, name)
        fresh = dataclasses.replace(iso_module, settings=dataclasses.replace(stack, postgres_dsn=dsn))
        files = await asyncio.to_thread(lambda: list((ROOT / "migrations").glob("*.sql")))
        expected = len([p for p in files if not p.name.endswith(".rollback.sql")])
        assert await faust(fresh, "migrate") == (0, f"migrations: {expected} applied\n", "")
        assert await faust(fresh, "migrate") == (0, "migrations: 0 applied\n", "")
        assert await faust(fresh, "migrate", "--rollback") == (0, f"migrations: {expected} rolled back\n", "")
    finally:
        await asyncio.to_thread(admin_execute, stack.postgres_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    away = dataclasses.replace(stack, postgres_dsn=f"postgresql://somaagent:somaagent@127.0.0.1:{free_port()}/x")
    code, _, err = await faust(dataclasses.replace(iso_module, settings=away), "migrate")
    assert code == 2 and err.startswith("migrate: cannot reach PostgreSQL") and len(err.strip().splitlines()) == 1


async def test_stack_reports_and_reuses_the_servers_and_refuses_an_unknown_action(iso_module: Isolated) -> None:
    code, out, err = await faust(iso_module, "stack")
    assert code == 0, err
    status = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert (status["kafka"], status["redis"], status["postgres"]) == ("up", "up", "up"), out
    code, out, err = await faust(iso_module, "stack", "up")  # they answer: reused, nothing started
    assert code == 0, err
    up = {line.split()[0]: line for line in out.splitlines()}
    assert f"on {iso_module.settings.kafka_bootstrap} (" in up["kafka"] and "started" not in out, out
    code, _, err = await faust(iso_module, "stack", "sideways")
    assert code == 2 and err == "stack: unknown action 'sideways': status, up, down, tools\n"
