"""The responder against a real model server (llama.cpp's, with SmolLM2-135M, built by ``make tools``): a posted
message is answered with deltas then one final on WebSocket and SSE; a worker killed mid-reply leaves exactly one
final, after a notice that names the abandoned stream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
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
from app import redis_client, stops
from deploy.localstack.base import pid_alive, port_open
from deploy.localstack.slm_server import SlmServer
from deploy.localstack.stt_server import SttServer
from tests.support.client import SseReader, get_json, post_message
from tests.support.db import query, wait_rows
from tests.support.isolation import Isolated
from tests.support.private import private_slm, private_stt
from tests.support.speech import SPOKEN, heard_hello_backbone, speak
from tests.support.worker import Worker, running

# replies of the module's worker: short enough for a loaded machine (a few tokens/s beside the suite and two
# busy loops), long enough to be stopped mid-way (the stop tests pause the model once two deltas are stored)
MAX_TOKENS = 48
# a small model writes ~30 tokens/s here: a reply of SOMA_SLM_MAX_TOKENS takes seconds, more beside a busy suite
REPLY_WITHIN = 400.0


# the model's speed sets these tests' length: on a machine busy with other work it writes a few tokens a second
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def slm(iso_module: Isolated) -> Iterator[SlmServer]:
    with private_slm(iso_module.settings) as server:
        yield server


def responder_env(iso: Isolated, slm: SlmServer, **extra: str) -> dict[str, str]:
    """A worker answering with the module's model server; its replies' own deadline (SOMA_SLM_TIMEOUT_SECONDS)
    beyond the tests' waits, so that a slow machine fails a wait (with the log) rather than ends a reply early."""
    settings = {"SOMA_SLM_URL": slm.url, "SOMA_SLM_TEMPERATURE": "0", "SOMA_SLM_TIMEOUT_SECONDS": "900", **extra}
    return iso.env(**settings)


async def wait_finals(worker: Worker, dsn: str, session: str, count: int, timeout: float) -> list[dict[str, Any]]:
    """The session's stored finals once there are ``count``; else fail with its events and the worker's log."""
    finals = "SELECT payload FROM session_events WHERE session_id = %s AND type = 'assistant.final' ORDER BY seq"
    try:
        return [r["payload"] for r in await wait_rows(dsn, finals, (session,), count, timeout=timeout)]
    except AssertionError as exc:
        seen = query(dsn, "SELECT payload->>'type' AS type FROM session_events WHERE session_id = %s", (session,))
        kinds = [r["type"] for r in seen]
        raise AssertionError(f"{exc}\nstored: {kinds}\nworker log:\n{worker.log(60)}") from None


@pytest.fixture(scope="module")
def stt(iso_module: Isolated) -> Iterator[SttServer]:
    with private_stt(iso_module.settings) as server:
        yield server


@pytest.fixture(scope="module")
async def worker(iso_module: Isolated, slm: SlmServer, stt: SttServer, artifacts: Path) -> AsyncIterator[Worker]:
    env = responder_env(iso_module, slm, SOMA_SLM_MAX_TOKENS=str(MAX_TOKENS), SOMA_STT_URL=stt.url)
    async with running(env, artifacts / "logs" / f"responder-{iso_module.tag}.log") as worker:
        yield worker


def session_events(dsn: str, session: str) -> list[dict[str, Any]]:
    """The session's stored events, in seq order."""
    return [
        r["payload"]
        for r in query(dsn, "SELECT payload FROM session_events WHERE session_id = %s ORDER BY seq", (session,))
    ]


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
    assert session_events(iso_module.settings.postgres_dsn, session) == on_ws
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
    status, first = await post_message(worker.url, {"session_id": session, "message": "My name is Zorblax."})
    assert status == 202, first
    (reply,) = await wait_finals(worker, dsn, session, 1, timeout=REPLY_WITHIN)
    status, second = await post_message(worker.url, {"session_id": session, "message": "What is my name?"})
    assert status == 202, second
    await wait_finals(worker, dsn, session, 2, timeout=REPLY_WITHIN)
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


async def test_a_voice_message_is_transcribed_and_answered(
    worker: Worker, iso_module: Isolated, tmp_path: Path
) -> None:
    """espeak-ng says "hello backbone"; the real speech server writes it, the real model answers it."""
    audio = await asyncio.to_thread(speak, SPOKEN, tmp_path / "hello.wav", iso_module.settings.cache_dir)
    session = f"reply-voice-{uuid.uuid4().hex[:8]}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{worker.url}/v1/session/{session}/voice", data=audio, headers={"Content-Type": "audio/wav"}
        ) as response,
    ):
        assert response.status == 202, await response.text()
        answer = await response.json()
    assert heard_hello_backbone(answer["transcript"]), answer
    dsn = iso_module.settings.postgres_dsn
    await wait_finals(worker, dsn, session, 1, timeout=REPLY_WITHIN)
    stored = session_events(dsn, session)
    assert stored[0]["event_id"] == answer["event_id"] and stored[0]["metadata"]["source"] == "voice"
    assert stored[0]["message"] == answer["transcript"]
    check_reply(stored, answer["event_id"])
    # /health reports both servers the worker uses
    status, health = await get_json(worker.url, "/health")
    assert status == 200 and health["status"] == "ok", health
    assert health["components"]["slm"]["models"] == ["smollm2"] and health["components"]["stt"]["status"] == "ok"


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
        (final,) = await wait_finals(worker, dsn, session, 1, timeout=REPLY_WITHIN)
        events = session_events(dsn, session)
        stopped = [e for e in events if e["type"] == "assistant.delta"]
        assert final["metadata"]["status"] == "stopped", final["metadata"]
        assert final["message"] == "".join(d["message"] for d in stopped)
        assert 0 < int(final["metadata"]["tokens"]) < MAX_TOKENS


async def test_a_worker_killed_mid_reply_leaves_exactly_one_final_after_a_restart_notice(
    iso: Isolated, slm: SlmServer, artifacts: Path
) -> None:
    env = responder_env(iso, slm, SOMA_SLM_MAX_TOKENS="64", SOMA_KAFKA_SESSION_TIMEOUT_SECONDS="6")
    dsn = iso.settings.postgres_dsn
    session = f"reply-kill-{uuid.uuid4().hex[:8]}"
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
        assert not [e for e in session_events(dsn, session) if e["type"] == "assistant.final"]
    finally:
        await first.killed()
        os.kill(pid, signal.SIGCONT)
    async with running(env, artifacts / "logs" / f"responder-kill-b-{iso.tag}.log") as second:
        await wait_finals(second, dsn, session, 1, timeout=REPLY_WITHIN + 60)
    stored = session_events(dsn, session)
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
    env = responder_env(iso, slm, SOMA_SLM_TOOLS="echo", SOMA_SLM_TOOL_CHOICE="echo", SOMA_SLM_MAX_TOKENS="64")
    dsn = iso.settings.postgres_dsn
    session = f"reply-tool-{uuid.uuid4().hex[:8]}"
    async with running(env, artifacts / "logs" / f"responder-tool-{iso.tag}.log") as worker:
        status, answer = await post_message(
            worker.url, {"session_id": session, "message": "Please echo the word pineapple."}
        )
        assert status == 202, answer
        await wait_finals(worker, dsn, session, 1, timeout=REPLY_WITHIN)
    stored = session_events(dsn, session)
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


async def test_a_model_server_killed_mid_reply_is_asked_again_on_a_new_stream(
    worker: Worker, slm: SlmServer, iso_module: Isolated
) -> None:
    """The model server dies (SIGKILL) mid-reply and is started again: the reply is attempted again, on a new
    stream after a ``reply_restarted`` notice, and ends with one complete final."""
    dsn = iso_module.settings.postgres_dsn
    session = f"reply-model-killed-{uuid.uuid4().hex[:8]}"
    status, posted = await post_message(worker.url, {"session_id": session, "message": LONG})
    assert status == 202, posted
    deltas = "SELECT 1 FROM session_events WHERE session_id = %s AND type = 'assistant.delta'"
    await wait_rows(dsn, deltas, (session,), 3, timeout=REPLY_WITHIN)
    pid = await asyncio.to_thread(slm.ours)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60

    def gone() -> bool:
        return not pid_alive(pid) and not port_open(slm.host, slm.port)

    while not await asyncio.to_thread(gone) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    # started again on its port (meanwhile the new attempt finds it unreachable and waits with backoff)
    await asyncio.to_thread(slm.up)
    (final,) = await wait_finals(worker, dsn, session, 1, timeout=REPLY_WITHIN)
    stored = session_events(dsn, session)
    request_id = posted["event_id"]
    (notice,) = [e for e in stored if e["type"] == "system.notice"]
    assert notice["metadata"] == {
        "notice": "reply_restarted",
        "reply_to": request_id,
        "stream_id": f"{request_id}.1",
    }
    abandoned = [e for e in stored if e.get("stream_id") == f"{request_id}.1"]
    assert abandoned and max(e["seq"] for e in abandoned) < notice["seq"]
    assert final["stream_id"] == f"{request_id}.2"
    check_reply([e for e in stored if e.get("stream_id") != f"{request_id}.1"], request_id)


async def test_a_stop_watcher_cancelled_mid_command_ends_though_the_redis_client_swallows_it(
    iso_module: Isolated,
) -> None:
    """redis-py 8.1 loses a cancellation that arrives while a command is in flight about one time in five (the
    command returns, the task goes on): a reply's stop watcher, cancelled when the reply ends, must end anyway,
    or the reply waits for it forever (what stalled replies for 400 s under load). Against the stack's Redis,
    cancelled at 200 random moments, it ends every time."""
    settings = iso_module.settings
    client = redis_client.connect(settings.redis_url, socket_timeout=10, retry_on_timeout=False)
    chance = random.Random(14)
    try:
        for _ in range(200):
            watcher = asyncio.ensure_future(
                stops.wait_for_stop(client, settings.redis_prefix, "watched", time.time(), 0.001)
            )
            await asyncio.sleep(chance.random() * 0.01)
            watcher.cancel()
            done, _ = await asyncio.wait({watcher}, timeout=10)
            assert done and watcher.cancelled(), "the stop watcher went on after it was cancelled"
    finally:
        await client.aclose()


async def frames_until(ws: aiohttp.ClientWebSocketResponse, done: Any, within: float) -> list[dict[str, Any]]:
    """Frames of ``ws`` up to and including the first for which ``done(frame)`` holds."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while not seen or not done(seen[-1]):
        seen.append(json.loads((await ws.receive(timeout=max(0.1, deadline - time.monotonic()))).data))
    return seen


async def test_a_late_joiner_gets_the_reply_so_far_in_one_frame_and_after_the_final_the_final_alone(
    worker: Worker, slm: SlmServer, iso_module: Isolated
) -> None:
    """History replays a reply folded: its deltas so far as one frame (``folded``: the seqs it stands for),
    then the live deltas; once the final is stored, the final alone. Resume inside a reply stays exact."""
    dsn = iso_module.settings.postgres_dsn
    session = f"reply-late-{uuid.uuid4().hex[:8]}"
    status, posted = await post_message(worker.url, {"session_id": session, "message": LONG})
    assert status == 202, posted
    deltas = "SELECT 1 FROM session_events WHERE session_id = %s AND type = 'assistant.delta'"
    await wait_rows(dsn, deltas, (session,), 3, timeout=REPLY_WITHIN)
    ws_url = f"{worker.url.replace('http', 'ws')}/v1/session/{session}/stream"
    recovered = lambda frame: frame.get("type") == "recovered"  # noqa: E731
    final = lambda frame: frame.get("type") == "assistant.final"  # noqa: E731
    async with aiohttp.ClientSession() as http:
        async with model_paused(slm):
            ws = await http.ws_connect(ws_url)
            history = [f for f in await frames_until(ws, recovered, 60) if "seq" in f]
        try:
            live = [f for f in await frames_until(ws, final, REPLY_WITHIN) if "seq" in f]
        finally:
            await ws.close()
        # the message, then the reply so far in one frame standing for every delta stored when it joined
        assert [f["type"] for f in history] == ["user.message", "assistant.delta"], history
        so_far = history[1]
        assert so_far["folded"] == [2, so_far["seq"]]
        stored = session_events(dsn, session)
        folded = [e for e in stored if 2 <= e["seq"] <= so_far["seq"]]
        assert {e["type"] for e in folded} == {"assistant.delta"} and len(folded) >= 3
        assert so_far["message"] == "".join(e["message"] for e in folded)
        assert so_far["index"] == folded[-1]["index"] and so_far["stream_id"] == folded[-1]["stream_id"]
        # then every later event live, each seq once, and the final: the folded text and the live deltas joined
        assert [f["seq"] for f in live] == list(range(so_far["seq"] + 1, so_far["seq"] + 1 + len(live)))
        assert "folded" not in live[-1]
        live_deltas = [f["message"] for f in live if f["type"] == "assistant.delta"]
        assert live[-1]["message"] == so_far["message"] + "".join(live_deltas)
        assert live == [e for e in stored if e["seq"] > so_far["seq"]]
        # after the final: the final alone stands for the reply; resumed inside it, for the deltas not yet seen
        last = live[-1]["seq"]
        for after, expected in ((0, ["user.message", "assistant.final"]), (3, ["assistant.final"])):
            async with http.ws_connect(f"{ws_url}?after={after}") as late:
                replay = [f for f in await frames_until(late, recovered, 60) if "seq" in f]
            assert [f["type"] for f in replay] == expected, replay
            assert replay[-1]["folded"] == [max(2, after + 1), last - 1]
            assert replay[-1]["message"] == live[-1]["message"]
    # exact history is still there to read, delta by delta (GET .../events pages are never folded)
    status, page = await get_json(worker.url, f"/v1/session/{session}/events?after=0&limit=1000")
    assert status == 200 and [e["seq"] for e in page["events"]] == list(range(1, last + 1)), page


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

    # the model paused: the reply waits (in Kafka, then at the model server), the console says "thinking…"
    async with model_paused(slm):
        await page.get_by_label("Message", exact=True).fill(LONG)
        await page.get_by_label("Message", exact=True).press("Enter")
        await expect(page.locator("#events li.thinking")).to_have_text("thinking…", timeout=30_000)
        await expect(page.locator("#events li.reply")).to_have_count(0)
    # then the reply streams into one row (in the thinking row's place), its text growing, then the final's text
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
        # the reply so far came folded into one frame: its deltas' seqs are not shown as missing
        await expect(late.locator("#events li.gap")).to_have_count(0)
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
    # every delta went into the one row: no row per delta, and the thinking row is gone
    assert await page.locator("#events li").count() == 2  # the message and its reply
