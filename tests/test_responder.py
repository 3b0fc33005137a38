"""The responder against a real model server (llama.cpp's, with SmolLM2-135M, built by ``make tools``): a posted
message is answered with deltas then one final on WebSocket and SSE; a worker killed mid-reply leaves exactly one
final, after a notice that names the abandoned stream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiopg
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from agents.responder import history
from deploy.localstack.slm_server import SlmServer
from tests.support.client import SseReader, post_message
from tests.support.db import query, wait_rows
from tests.support.isolation import Isolated
from tests.support.private import private_slm
from tests.support.worker import Worker, running

# replies of the module's worker: short enough for a loaded machine (a few tokens/s beside the suite and two
# busy loops), long enough to be stopped mid-way (the stop tests pause the model once two deltas are stored)
MAX_TOKENS = 80
# a small model writes ~30 tokens/s here: a reply of SOMA_SLM_MAX_TOKENS takes seconds, more beside a busy suite
REPLY_WITHIN = 400.0


# the model's speed sets these tests' length: on a machine busy with other work it writes a few tokens a second
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def slm(iso_module: Isolated) -> Iterator[SlmServer]:
    with private_slm(iso_module.settings) as server:
        yield server


def responder_env(iso: Isolated, slm: SlmServer, **extra: str) -> dict[str, str]:
    return iso.env(SOMA_SLM_URL=slm.url, SOMA_SLM_TEMPERATURE="0", **extra)


@pytest.fixture(scope="module")
async def worker(iso_module: Isolated, slm: SlmServer, artifacts: Path) -> AsyncIterator[Worker]:
    env = responder_env(iso_module, slm, SOMA_SLM_MAX_TOKENS=str(MAX_TOKENS), SOMA_SLM_TIMEOUT_SECONDS="600")
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
    # counted on /metrics: the reply by the status of its final, its tokens
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/metrics") as response:
        text = await response.text()
    status_line = f'soma_replies_total{{status="{final["metadata"]["status"]}"}}'
    replied = [line for line in text.splitlines() if line.startswith(status_line)]
    assert replied and float(replied[0].split()[-1]) >= 1, text[-2000:]
    tokens = [line for line in text.splitlines() if line.startswith("soma_reply_tokens_total")]
    assert tokens and float(tokens[0].split()[-1]) >= int(final["metadata"]["tokens"])


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


LONG = "Write the numbers from 1 to 500 separated by commas."  # as many tokens as it may, at temperature 0


@contextlib.asynccontextmanager
async def model_paused(slm: SlmServer) -> AsyncIterator[None]:
    """The model server stopped (SIGSTOP) within, resumed after: a reply is surely mid-way meanwhile, however fast
    or slow the machine writes."""
    pid = await asyncio.to_thread(slm.ours)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_client_stops_a_reply_by_post_or_on_its_websocket_and_the_final_says_stopped(
    worker: Worker, slm: SlmServer, iso_module: Isolated
) -> None:
    dsn = iso_module.settings.postgres_dsn
    deltas = "SELECT 1 FROM session_events WHERE session_id = %s AND type = 'assistant.delta'"
    finals = "SELECT payload FROM session_events WHERE session_id = %s AND type = 'assistant.final'"
    by_post, by_ws = (f"reply-stop-{how}-{uuid.uuid4().hex[:8]}" for how in ("post", "ws"))
    status, posted = await post_message(worker.url, {"session_id": by_post, "message": LONG})
    assert status == 202, posted
    await wait_rows(dsn, deltas, (by_post,), 2, timeout=REPLY_WITHIN)
    async with aiohttp.ClientSession() as http:
        async with model_paused(slm):
            async with http.post(f"{worker.url}/v1/session/{by_post}/stop") as response:
                assert response.status == 202, await response.text()
                assert (await response.json())["session_id"] == by_post
            # stopped while the model writes nothing: the reply ends without waiting for it
            await wait_rows(dsn, finals, (by_post,), 1, timeout=60)
        ws_url = f"{worker.url.replace('http', 'ws')}/v1/session/{by_ws}/stream"
        async with http.ws_connect(ws_url) as ws:
            await ws.send_json({"message": LONG, "ref": "m"})
            seen: list[dict[str, Any]] = []
            while sum(1 for e in seen if e.get("type") == "assistant.delta") < 2:
                seen.append(json.loads((await ws.receive(timeout=REPLY_WITHIN)).data))
            async with model_paused(slm):
                await ws.send_json({"action": "stop", "ref": "s"})
                while not any(e.get("type") == "assistant.final" for e in seen):
                    seen.append(json.loads((await ws.receive(timeout=60)).data))
        assert {"type": "ack", "ref": "s"}.items() <= next(e for e in seen if e.get("ref") == "s").items()
    for session in (by_post, by_ws):
        (final,) = [r["payload"] for r in await wait_rows(dsn, finals, (session,), 1, timeout=REPLY_WITHIN)]
        events = [
            r["payload"]
            for r in query(dsn, "SELECT payload FROM session_events WHERE session_id = %s ORDER BY seq", (session,))
        ]
        stopped = [e for e in events if e["type"] == "assistant.delta"]
        assert final["metadata"]["status"] == "stopped", final["metadata"]
        assert final["message"] == "".join(d["message"] for d in stopped)
        assert 0 < int(final["metadata"]["tokens"]) < MAX_TOKENS


async def test_a_worker_killed_mid_reply_leaves_exactly_one_final_after_a_restart_notice(
    iso: Isolated, slm: SlmServer, artifacts: Path
) -> None:
    env = responder_env(iso, slm, SOMA_SLM_MAX_TOKENS="200", SOMA_KAFKA_SESSION_TIMEOUT_SECONDS="6")
    dsn = iso.settings.postgres_dsn
    session = f"reply-kill-{uuid.uuid4().hex[:8]}"
    events = "SELECT payload FROM session_events WHERE session_id = %s ORDER BY seq"
    first = Worker(env, artifacts / "logs" / f"responder-kill-a-{iso.tag}.log")
    await first.started()
    await first.wait_http()
    pid = await asyncio.to_thread(slm.ours)
    assert pid is not None
    try:
        status, answer = await post_message(first.url, {"session_id": session, "message": LONG})
        assert status == 202, answer
        deltas = "SELECT 1 FROM session_events WHERE session_id = %s AND type = 'assistant.delta'"
        await wait_rows(dsn, deltas, (session,), 3, timeout=REPLY_WITHIN)
        # the model paused (SIGSTOP) so that the reply is surely mid-way when its worker dies, however fast
        # or slow the machine writes
        os.kill(pid, signal.SIGSTOP)
        assert not [r for r in query(dsn, events, (session,)) if r["payload"]["type"] == "assistant.final"]
    finally:
        await first.killed()
        os.kill(pid, signal.SIGCONT)
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


async def test_a_tool_call_round_trips_through_the_executor_and_the_model_answers_after_its_result(
    iso: Isolated, slm: SlmServer, artifacts: Path
) -> None:
    """tool_choice forces the call (a 135M model seldom chooses one); the executor runs it like any request."""
    env = responder_env(iso, slm, SOMA_SLM_TOOLS="echo", SOMA_SLM_TOOL_CHOICE="echo", SOMA_SLM_MAX_TOKENS="120")
    dsn = iso.settings.postgres_dsn
    session = f"reply-tool-{uuid.uuid4().hex[:8]}"
    async with running(env, artifacts / "logs" / f"responder-tool-{iso.tag}.log") as worker:
        status, answer = await post_message(
            worker.url, {"session_id": session, "message": "Please echo the word pineapple."}
        )
        assert status == 202, answer
        finals = "SELECT 1 FROM session_events WHERE session_id = %s AND type = 'assistant.final'"
        await wait_rows(dsn, finals, (session,), 1, timeout=REPLY_WITHIN)
    stored = [
        r["payload"]
        for r in query(dsn, "SELECT payload FROM session_events WHERE session_id = %s ORDER BY seq", (session,))
    ]
    (request,) = [e for e in stored if e["type"] == "tool.request"]
    (result,) = [e for e in stored if e["type"] == "tool.result"]
    assert request["tool_name"] == "echo" and isinstance(request["args"], dict)
    assert request["metadata"]["reply_to"] == answer["event_id"]
    # the real executor answered it: the echo tool's own output
    assert result["request_id"] == request["event_id"]
    assert (result["status"], result["payload"]) == ("ok", {"echo": request["args"]})
    types = [e["type"] for e in stored]
    assert types.index("user.message") < types.index("tool.request") < types.index("tool.result")
    assert types.index("tool.result") < types.index("assistant.final")
    final = check_reply(stored, answer["event_id"])
    assert final["metadata"]["status"] in {"complete", "length"}


def reply_rows(page: Page) -> Locator:
    return page.locator("#events li.reply")


@pytest.mark.timeout(600)
async def test_the_console_streams_a_reply_shows_it_to_a_late_joiner_and_stops_one(
    browser: Browser, worker: Worker, slm: SlmServer, iso_module: Isolated
) -> None:
    dsn = iso_module.settings.postgres_dsn
    page = await browser.new_page()
    await page.goto(worker.url + "/")
    await page.get_by_role("button", name="New session", exact=True).click()
    session = await page.get_by_label("Session", exact=True).input_value()
    await expect(page.get_by_role("status")).to_contain_text("recovered: yes", timeout=30_000)

    # a reply streams into one row, its text growing, then the final's text
    await page.get_by_label("Message", exact=True).fill(LONG)
    await page.get_by_label("Message", exact=True).press("Enter")
    streaming = page.locator("#events li.reply.streaming")
    await expect(streaming).to_have_count(1, timeout=REPLY_WITHIN * 1000)
    await expect(page.get_by_role("button", name="Stop reply")).to_be_visible()
    first_text = await streaming.locator(".text").text_content()

    # the model server paused mid-reply (SIGSTOP), a second viewer joins: one row with the reply so far (from the
    # history), exactly what the first viewer shows, still streaming
    pid = await asyncio.to_thread(slm.ours)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        late = await browser.new_page()
        await late.goto(f"{worker.url}/#session={session}&transport=sse")
        await expect(late.locator("#events li.reply.streaming")).to_have_count(1, timeout=30_000)
        shown = await streaming.locator(".text").text_content()
        await expect(late.locator("#events li.reply .text")).to_have_text(shown or "", timeout=30_000)
        # stopped from the first viewer while the model is paused: the reply ends without another token
        await page.get_by_role("button", name="Stop reply").click()
        finals = "SELECT payload FROM session_events WHERE session_id = %s AND type = 'assistant.final'"
        (final,) = [r["payload"] for r in await wait_rows(dsn, finals, (session,), 1, timeout=60)]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert final["metadata"]["status"] == "stopped"
    assert first_text is not None and final["message"].startswith(first_text)
    for viewer in (page, late):
        row = viewer.locator("#events li.reply.final")
        await expect(row).to_have_count(1, timeout=30_000)
        await expect(row).to_have_attribute("data-status", "stopped")
        assert await row.locator(".text").text_content() == final["message"]
        await expect(viewer.get_by_role("button", name="Stop reply")).to_be_hidden()
    # every delta went into the one row: no row per delta
    assert await page.locator("#events li").count() == 2  # the message and its reply
