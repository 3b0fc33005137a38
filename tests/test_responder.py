"""The responder against a real model server (llama.cpp's, with SmolLM2-135M, built by ``make tools``): a posted
message is answered with deltas then one final on WebSocket and SSE; a worker killed mid-reply leaves exactly one
final, after a notice that names the abandoned stream."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiopg
import pytest

from agents.responder import history
from deploy.localstack.slm_server import SlmServer
from tests.support.client import SseReader, post_message
from tests.support.db import query, wait_rows
from tests.support.isolation import Isolated
from tests.support.private import private_slm
from tests.support.worker import Worker, running

# a small model writes ~30 tokens/s here: a reply of SOMA_SLM_MAX_TOKENS takes seconds, more beside a busy suite
REPLY_WITHIN = 180.0


@pytest.fixture(scope="module")
def slm(iso_module: Isolated) -> Iterator[SlmServer]:
    with private_slm(iso_module.settings) as server:
        yield server


def responder_env(iso: Isolated, slm: SlmServer, **extra: str) -> dict[str, str]:
    return iso.env(SOMA_SLM_URL=slm.url, SOMA_SLM_TEMPERATURE="0", **extra)


@pytest.fixture(scope="module")
async def worker(iso_module: Isolated, slm: SlmServer, artifacts: Path) -> AsyncIterator[Worker]:
    env = responder_env(iso_module, slm, SOMA_SLM_MAX_TOKENS="40")
    async with running(env, artifacts / "logs" / f"responder-{iso_module.tag}.log") as worker:
        yield worker


def check_reply(events: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    """The reply to ``request_id`` among ``events`` (in seq order): its deltas 0..n-1 of one stream, then one final
    whose text is their concatenation; the final."""
    reply = [e for e in events if e.get("metadata", {}).get("reply_to") == request_id]
    deltas = [e for e in reply if e["type"] == "assistant.delta"]
    finals = [e for e in reply if e["type"] == "assistant.final"]
    assert len(finals) == 1, f"{len(finals)} finals"
    final = finals[0]
    assert deltas, "no delta before the final"
    assert reply[-1] is final, "a delta after the final"
    assert [d["index"] for d in deltas] == list(range(len(deltas)))
    assert {d["stream_id"] for d in deltas} == {final["stream_id"]}
    assert final["message"] == "".join(d["message"] for d in deltas)
    assert final["message"].strip(), "an empty reply"
    assert final["metadata"]["status"] in {"complete", "length"}, final["metadata"]
    assert final["metadata"]["deltas"] == str(len(deltas))
    seqs = [e["seq"] for e in reply]
    assert seqs == sorted(seqs)
    return final


async def test_a_message_is_answered_with_deltas_then_one_final_on_websocket_and_sse(
    worker: Worker, iso_module: Isolated
) -> None:
    session = f"reply-{uuid.uuid4().hex[:8]}"
    ws_url = f"{worker.url.replace('http', 'ws')}/v1/session/{session}/stream"
    sse_url = f"{worker.url}/v1/session/{session}/events"
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url) as ws,
        http.get(sse_url, headers={"Accept": "text/event-stream"}) as sse,
    ):
        status, answer = await post_message(worker.url, {"session_id": session, "message": "Say hello to the team."})
        assert status == 202, answer
        on_ws: list[dict[str, Any]] = []
        deadline = time.monotonic() + REPLY_WITHIN
        while not any(e.get("type") == "assistant.final" for e in on_ws):
            frame = json.loads((await ws.receive(timeout=max(0.1, deadline - time.monotonic()))).data)
            if "seq" in frame:
                on_ws.append(frame)
        reader = SseReader(sse)
        on_sse: list[dict[str, Any]] = []
        while len(on_sse) < len(on_ws):
            (event,) = await reader.events(1, timeout=30)
            if event["id"] is not None:
                on_sse.append(event["data"])
    assert on_ws[0]["type"] == "user.message" and on_ws[0]["event_id"] == answer["event_id"]
    final = check_reply(on_ws, answer["event_id"])
    assert [e["seq"] for e in on_ws] == list(range(1, len(on_ws) + 1))
    assert on_sse == on_ws  # the same events, in the same order, on both transports
    # stored once: exactly one final for the message in PostgreSQL, as streamed
    rows = query(
        iso_module.settings.postgres_dsn,
        "SELECT payload FROM session_events WHERE session_id = %s ORDER BY seq",
        (session,),
    )
    assert [r["payload"] for r in rows] == on_ws
    assert final["role"] == "assistant" and final["metadata"]["model"] == "smollm2"


async def test_the_model_is_given_the_persona_and_the_session_so_far_within_its_budget(
    worker: Worker, iso_module: Isolated
) -> None:
    """The model's input, read from PostgreSQL as the responder reads it: the persona's prompt, the earlier
    messages and finals of the session up to the message answered, the oldest dropped beyond the budget."""
    session = f"reply-history-{uuid.uuid4().hex[:8]}"
    dsn = iso_module.settings.postgres_dsn
    finals = "SELECT payload FROM session_events WHERE session_id = %s AND type = 'assistant.final' ORDER BY seq"
    status, first = await post_message(worker.url, {"session_id": session, "message": "My name is Zorblax."})
    assert status == 202, first
    (reply,) = [r["payload"] for r in await wait_rows(dsn, finals, (session,), 1, timeout=REPLY_WITHIN)]
    status, second = await post_message(worker.url, {"session_id": session, "message": "What is my name?"})
    assert status == 202, second
    await wait_rows(dsn, finals, (session,), 2, timeout=REPLY_WITHIN)
    base = dataclasses.replace(iso_module.settings, slm_personas=json.dumps({"pirate": "Talk like a pirate."}))
    request = {"session_id": session, "request_id": second["event_id"], "persona_id": "pirate"}
    pool = await aiopg.create_pool(dsn, minsize=0, maxsize=1)
    try:
        everything = await history(pool, base.responder(), request)
        tight = await history(pool, dataclasses.replace(base, slm_history_chars=20).responder(), request)
        unknown = await history(pool, base.responder(), {**request, "persona_id": "nobody"})
    finally:
        pool.close()
        await pool.wait_closed()
    assert everything == [
        {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "My name is Zorblax."},
        {"role": "assistant", "content": reply["message"]},
        {"role": "user", "content": "What is my name?"},
    ]
    # the message answered always goes; what does not fit the budget before it does not
    assert tight == [
        {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "What is my name?"},
    ]
    assert unknown[0] == {"role": "system", "content": base.slm_system_prompt}


async def test_a_worker_killed_mid_reply_leaves_exactly_one_final_after_a_restart_notice(
    iso: Isolated, slm: SlmServer, artifacts: Path
) -> None:
    env = responder_env(iso, slm, SOMA_SLM_MAX_TOKENS="1000", SOMA_KAFKA_SESSION_TIMEOUT_SECONDS="6")
    dsn = iso.settings.postgres_dsn
    session = f"reply-kill-{uuid.uuid4().hex[:8]}"
    events = "SELECT payload FROM session_events WHERE session_id = %s ORDER BY seq"
    first = Worker(env, artifacts / "logs" / f"responder-kill-a-{iso.tag}.log")
    await first.started()
    await first.wait_http()
    try:
        status, answer = await post_message(
            first.url, {"session_id": session, "message": "Write the numbers from 1 to 500 separated by commas."}
        )
        assert status == 202, answer
        deltas = "SELECT 1 FROM session_events WHERE session_id = %s AND type = 'assistant.delta'"
        await wait_rows(dsn, deltas, (session,), 3, timeout=REPLY_WITHIN)
        assert not [r for r in query(dsn, events, (session,)) if r["payload"]["type"] == "assistant.final"], (
            "the reply finished before the kill: the test proves nothing"
        )
    finally:
        await first.killed()
    async with running(env, artifacts / "logs" / f"responder-kill-b-{iso.tag}.log"):
        finals = "SELECT 1 FROM session_events WHERE session_id = %s AND type = 'assistant.final'"
        await wait_rows(dsn, finals, (session,), 1, timeout=REPLY_WITHIN + 60)
    stored = [r["payload"] for r in query(dsn, events, (session,))]
    finals_stored = [e for e in stored if e["type"] == "assistant.final"]
    assert len(finals_stored) == 1
    final = finals_stored[0]
    assert final["stream_id"] == f"{answer['event_id']}.2"  # the second attempt's stream
    notices = [e for e in stored if e["type"] == "system.notice"]
    assert len(notices) == 1 and notices[0]["metadata"] == {
        "notice": "reply_restarted",
        "reply_to": answer["event_id"],
        "stream_id": f"{answer['event_id']}.1",
    }
    # the abandoned stream's deltas come before the notice, the new stream's after it; the final is theirs
    abandoned = [e for e in stored if e.get("stream_id") == f"{answer['event_id']}.1"]
    assert abandoned and max(e["seq"] for e in abandoned) < notices[0]["seq"]
    check_reply([e for e in stored if e.get("stream_id") != f"{answer['event_id']}.1"], answer["event_id"])
