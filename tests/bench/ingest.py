"""W1 ingest: events produced straight to Kafka, and POSTed over HTTP by wrk, each beside its baseline."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiopg
from aiokafka import AIOKafkaConsumer

from deploy.localstack.base import free_port, require_command
from tests.bench.harness import ROOT, Result, Stack, cpu_seconds, log_path, start_worker, wait_for
from tests.support.events import message, record
from tests.support.isolation import Isolated
from tests.support.kafka import create_topic, produce

COUNT_SQL = "SELECT count(*) FROM session_events"
# every session's seqs run 1..n: its highest seq equals its number of rows
GAPS_SQL = """
SELECT count(*) FROM (SELECT session_id FROM session_events GROUP BY session_id HAVING max(seq) <> count(*)) AS s
"""
WRK_LUA = Path(__file__).with_name("post.lua")


async def scalar(pool: aiopg.Pool, sql: str) -> int:
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql)
        row = await cur.fetchone()
        return int(row[0])


async def kafka_consume_rate(bootstrap: str, topic: str, count: int) -> float:
    """Baseline: records/s a plain aiokafka consumer reads (and decodes as JSON) from the same topic."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=f"bench-{uuid.uuid4().hex[:8]}"
    )
    await consumer.start()
    try:
        seen = 0
        began = None
        while seen < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            if began is None and batch:
                began = time.perf_counter()
            for records in batch.values():
                for rec in records:
                    json.loads(rec.value)
                seen += sum(len(r) for r in batch.values())
        assert began is not None
        return count / (time.perf_counter() - began)
    finally:
        await consumer.stop()


async def insert_rate(dsn: str, events: list[dict[str, Any]], batch: int) -> float:
    """Baseline: rows/s of a plain multi-row INSERT ... unnest of the same rows through the same driver (aiopg)."""
    seqs: dict[str, int] = {}
    rows = []
    for event in events:
        seqs[event["session_id"]] = seqs.get(event["session_id"], 0) + 1
        rows.append((event["event_id"], event["session_id"], seqs[event["session_id"]], json.dumps(event)))
    async with aiopg.create_pool(dsn, minsize=1, maxsize=1) as pool, pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("INSERT INTO session_envelopes (session_id) SELECT unnest(%s::text[])", (list(seqs),))
        began = time.perf_counter()
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            await cur.execute(
                """
                INSERT INTO session_events (event_id, session_id, seq, type, role, payload, occurred_at)
                SELECT e.event_id, e.session_id, e.seq, 'user.message', 'user', e.payload, now()
                FROM unnest(%s::uuid[], %s::text[], %s::bigint[], %s::jsonb[]) AS e(event_id, session_id, seq, payload)
                """,
                [list(column) for column in zip(*chunk, strict=True)],
            )
        return len(rows) / (time.perf_counter() - began)


async def ingest_direct(stack: Stack, count: int, sessions: int) -> Result:
    """Events produced to conversation.inbound before a worker starts; stored/s once it processes them."""
    with stack.slice("ingest-direct") as iso:
        settings = iso.settings
        topic = iso.topic("conversation.inbound")
        await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
        produced = [message(f"ing-{n % sessions}", f"event {n}") for n in range(count)]
        for start in range(0, count, 20_000):
            await produce(settings.kafka_bootstrap, topic, [record(e) for e in produced[start : start + 20_000]])
        consumed = await kafka_consume_rate(settings.kafka_bootstrap, topic, count)
        with stack.slice("ingest-insert") as plain:
            inserted = await insert_rate(plain.settings.postgres_dsn, produced, settings.batch_max)
        stored = await _service_ingest(iso, count)
    return {
        "events": count,
        "sessions": sessions,
        "kafka_consume_per_s": round(consumed),
        "insert_per_s": round(inserted),
        **stored,
        "ratio_to_insert": round(stored["stored_per_s"] / inserted, 3),
    }


async def _service_ingest(iso: Isolated, count: int) -> Result:
    worker = start_worker(iso.env(), "ingest-direct-worker")
    timeline: list[tuple[float, int]] = []
    try:
        async with aiopg.create_pool(iso.settings.postgres_dsn, minsize=1, maxsize=1) as pool:

            async def started() -> bool:
                assert worker.proc is not None and worker.proc.poll() is None, worker.log()
                return await scalar(pool, COUNT_SQL) > 0

            assert await wait_for(started, 120), worker.log()
            began, cpu_began = time.perf_counter(), cpu_seconds(worker.pid)
            first = await scalar(pool, COUNT_SQL)
            timeline.append((0.0, first))

            async def done() -> bool:
                stored = await scalar(pool, COUNT_SQL)
                timeline.append((time.perf_counter() - began, stored))
                return stored >= count

            assert await wait_for(done, 600, every=0.1), f"stored {timeline[-1][1]} of {count}:\n{worker.log()}"
            elapsed, cpu = time.perf_counter() - began, cpu_seconds(worker.pid) - cpu_began
            gaps = await scalar(pool, GAPS_SQL)
            distinct = await scalar(pool, "SELECT count(DISTINCT event_id) FROM session_events")
    finally:
        worker.stop()
    assert gaps == 0 and distinct == count, f"{gaps} sessions with gaps, {distinct} distinct events of {count}"
    return {
        "stored_per_s": round((count - first) / elapsed),
        "worker_cpu_ms_per_event": round(cpu * 1000 / (count - first), 4),
        "timeline": [(round(t, 2), n) for t, n in timeline],
    }


def run_wrk(url: str, seconds: float, connections: int, sessions: int) -> Result:
    wrk = require_command("wrk", "wrk")  # Debian's, installed on first use
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "15s", "-s", str(WRK_LUA), url, "--",
         str(sessions), "wrk"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    statuses = {int(k): int(v) for k, v in re.findall(r"(\d+)=(\d+)", out.split("STATUS", 1)[1].splitlines()[0])}
    p50, p99, worst = (int(v) / 1000 for v in re.findall(r"=(\d+)", out.split("LATENCY_US", 1)[1].splitlines()[0]))
    # wrk counts an answer that is not 2xx/3xx as a "status" error: those are in ``statuses`` already
    errors = sum(
        int(v) for k, v in re.findall(r"(\w+)=(\d+)", out.split("ERRORS", 1)[1].splitlines()[0]) if k != "status"
    )
    return {"statuses": statuses, "latency_ms": {"p50": p50, "p99": p99, "max": worst}, "errors": errors}


async def ingest_http(stack: Stack, seconds: float, connections: int, sessions: int) -> Result:
    """wrk POSTs to one worker, then the same to a plain aiohttp + aiokafka handler (the baseline)."""
    with stack.slice("ingest-http") as iso:
        worker = start_worker(iso.env(), "ingest-http-worker")
        try:
            await worker.wait_http()
            # warm-up: the group forms and every connection is made before the measured run
            run_wrk(worker.url, 3, 4, sessions)
            async with aiopg.create_pool(iso.settings.postgres_dsn, minsize=1, maxsize=1) as pool:

                async def settled() -> bool:
                    await asyncio.sleep(0.5)
                    before = await scalar(pool, COUNT_SQL)
                    await asyncio.sleep(0.5)
                    return bool(await scalar(pool, COUNT_SQL) == before)

                await wait_for(settled, 60)
                stored_before = await scalar(pool, COUNT_SQL)
                cpu_began = cpu_seconds(worker.pid)
                ours = await asyncio.to_thread(run_wrk, worker.url, seconds, connections, sessions)
                ended, cpu = time.perf_counter(), cpu_seconds(worker.pid) - cpu_began
                stored_at_end = await scalar(pool, COUNT_SQL) - stored_before
                accepted = ours["statuses"].get(202, 0)

                async def drained() -> bool:
                    return await scalar(pool, COUNT_SQL) - stored_before >= accepted

                assert await wait_for(drained, 300, every=0.02), worker.log()
                drain = time.perf_counter() - ended
        finally:
            worker.stop()
        baseline = await _plain_http(iso, seconds, connections, sessions)
    base_accepted = baseline["statuses"].get(202, 0)
    return {
        "seconds": seconds,
        "connections": connections,
        "accepted_per_s": round(accepted / seconds),
        "statuses": ours["statuses"],
        "errors": ours["errors"],
        "latency_ms": ours["latency_ms"],
        "worker_cpu_ms_per_request": round(cpu * 1000 / max(1, sum(ours["statuses"].values())), 4),
        "stored_during_load_per_s": round(stored_at_end / seconds),
        "drain_after_load_s": round(drain, 3),
        "baseline_accepted_per_s": round(base_accepted / seconds),
        "baseline_cpu_ms_per_request": baseline["cpu_ms_per_request"],
        "baseline_latency_ms": baseline["latency_ms"],
        "ratio_to_baseline": round(accepted / max(1, base_accepted), 3),
    }


async def _plain_http(iso: Isolated, seconds: float, connections: int, sessions: int) -> Result:
    port = free_port()
    topic = iso.topic("bench.plain")
    await create_topic(iso.settings.kafka_bootstrap, topic, iso.settings.topic_partitions)
    log = log_path("ingest-http-plain").open("w")
    # a short fork+exec; the bench waits for the server's "ready" line right after anyway
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "tests.bench.plain_server", iso.settings.kafka_bootstrap, topic, str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        url = f"http://127.0.0.1:{port}"
        run_wrk(url, 3, 4, sessions)
        cpu_began = cpu_seconds(proc.pid)
        result = await asyncio.to_thread(run_wrk, url, seconds, connections, sessions)
        cpu = cpu_seconds(proc.pid) - cpu_began
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    result["cpu_ms_per_request"] = round(cpu * 1000 / max(1, sum(result["statuses"].values())), 4)
    return result
