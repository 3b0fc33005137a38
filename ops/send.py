"""``faust -A app send-message TEXT``: post a message, then watch the session's stream for its outcome.

The message goes over HTTP to a worker (``POST /v1/session/message``), or with ``--direct`` straight to
``conversation.inbound`` as a validated ``user.message`` keyed by its session. Before sending, the command opens
the session's WebSocket stream at its current head, so nothing it waits for can pass unseen; then it waits, at
most ``--timeout`` seconds, until the message is stored (its event arrives with a seq: ``--wait-for stored``,
the default) or until an ``assistant.final`` follows it (``--wait-for reply``). Exit 0 when that happened,
1 when it did not in time or the message was refused, 2 for bad arguments or a worker that cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.cli import argument, option

from app import app, events, schemas
from app.errors import EventInvalid
from app.topics import CONVERSATION_INBOUND
from ops.base import FAILED, USAGE, WORKER_OPTIONS, CommandError, OpsCommand, bearer_headers, stream_url, worker_url

WAIT_FOR = ("stored", "reply")


async def _head(http: aiohttp.ClientSession, base: str, session: str, headers: dict[str, str]) -> int:
    async with http.get(f"{base}/v1/session/{session}", headers=headers) as resp:
        body: dict[str, Any] = await resp.json(content_type=None)
        if resp.status == 404:
            return 0
        if resp.status != 200:
            error = body.get("error", {})
            raise CommandError(f"{resp.status} {error.get('code')}: {error.get('message')}", FAILED)
        return int(body["last_seq"])


async def _post(http: aiohttp.ClientSession, base: str, body: dict[str, Any], headers: dict[str, str]) -> str:
    async with http.post(f"{base}/v1/session/message", json=body, headers=headers) as resp:
        answer: dict[str, Any] = await resp.json(content_type=None)
        if resp.status != 202:
            error = answer.get("error", {})
            raise CommandError(f"refused: {resp.status} {error.get('code')}: {error.get('message')}", FAILED)
        return str(answer["event_id"])


async def _produce(body: dict[str, Any]) -> str:
    settings = app.settings
    event = events.user_message(body)
    try:
        schemas.validate("conversation_event", event)
    except EventInvalid as exc:
        raise CommandError(f"not a valid message: {exc}") from None
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True, **settings.kafka_security()
    )
    try:
        await producer.start()
        await producer.send_and_wait(
            settings.topic(CONVERSATION_INBOUND),
            events.encode(event),
            key=event["session_id"].encode(),
            headers=events.headers(event, "conversation_event"),
        )
    except KafkaError as exc:
        raise CommandError(f"cannot send to the broker at {settings.kafka_bootstrap}: {exc}") from None
    finally:
        await producer.stop()
    return str(event["event_id"])


@app.command(
    argument("text"),
    option("--session", default=None, help="the session to post into [default: a new one]"),
    option("--persona", default=None, help="persona_id of the message"),
    option("--direct/--http", default=False, help="produce straight to Kafka instead of posting to a worker"),
    option("--wait-for", default="stored", show_default=True, help="stored (its seq) or reply (an assistant.final)"),
    option("--timeout", "seconds", type=float, default=30.0, show_default=True, help="seconds to wait for it"),
    *WORKER_OPTIONS,
    base=OpsCommand,
)
async def send_message(
    self: OpsCommand,
    text: str,
    session: str | None,
    persona: str | None,
    direct: bool,
    wait_for: str,
    seconds: float,
    url: str | None,
    token: str | None,
) -> int:
    """Post a message, then wait until it is stored (or answered) and say so; the exit code is the outcome."""
    if wait_for not in WAIT_FOR:
        raise CommandError(f"--wait-for must be stored or reply, not {wait_for!r}")
    if not text.strip() or seconds <= 0:
        raise CommandError("the message must not be empty, and --timeout must be positive")
    session = session or str(uuid.uuid4())
    body: dict[str, Any] = {"session_id": session, "message": text}
    if persona:
        body["persona_id"] = persona
    base = worker_url(url)
    headers = bearer_headers(token)
    try:
        async with aiohttp.ClientSession() as http:
            head = await _head(http, base, session, headers)
            async with http.ws_connect(stream_url(base, session, head), headers=headers, heartbeat=20) as ws:
                event_id = await (_produce(body) if direct else _post(http, base, body, headers))
                print(f"sent {event_id} to session {session}", flush=True)
                return await _watch(ws, event_id, wait_for, seconds)
    except aiohttp.WSServerHandshakeError as exc:
        raise CommandError(f"the stream was refused: {exc.status} {exc.message}", FAILED) from None
    except aiohttp.ClientError as exc:
        raise CommandError(f"cannot reach {base}: {exc}", USAGE) from None


async def _watch(ws: aiohttp.ClientWebSocketResponse, event_id: str, wait_for: str, seconds: float) -> int:
    stored_seq: int | None = None
    try:
        async with asyncio.timeout(seconds):
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = json.loads(message.data)
                if frame.get("event_id") == event_id and "seq" in frame:
                    stored_seq = frame["seq"]
                    print(f"stored as seq {stored_seq}", flush=True)
                    if wait_for == "stored":
                        return 0
                elif stored_seq is not None and frame.get("type") == "assistant.final":
                    print(f"reply (seq {frame['seq']}): {frame.get('message', '')}", flush=True)
                    return 0
    except TimeoutError:
        pass
    what = "stored" if stored_seq is None else "answered"
    raise CommandError(f"not {what} within {seconds:g} s", FAILED)
