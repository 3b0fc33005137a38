"""The operations commands as an operator runs them: ``faust -A app <command>`` against a real worker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.localstack.base import free_port
from tests.support.client import post_message
from tests.support.db import wait_rows
from tests.support.isolation import RUN_PREFIX, Isolated, admin_execute, with_database
from tests.support.kafka import create_topic, produce, read_topic, topic_configs
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
