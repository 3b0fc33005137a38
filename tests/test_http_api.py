"""The HTTP API against its OpenAPI document: every answer documented, bad input a 4xx with a code, never 5xx."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app import redis_client
from tests.support.db import query, wait_rows
from tests.support.isolation import Isolated
from tests.support.worker import Worker, running

DOC_URI = "urn:somaagent01:openapi"


@pytest.fixture(scope="module")
async def worker(iso_module: Isolated, artifacts: Path) -> AsyncIterator[Worker]:
    async with running(iso_module.env(), artifacts / "logs" / f"http-{iso_module.tag}.log") as worker:
        yield worker


@pytest.fixture(scope="module")
async def openapi(worker: Worker) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(worker.url + "/openapi.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        doc: dict[str, Any] = await resp.json()
    assert doc["openapi"].startswith("3.1")
    return doc


class Api:
    """Sends a request and checks the answer against the OpenAPI document."""

    def __init__(self, worker: Worker, doc: dict[str, Any]) -> None:
        self.worker = worker
        self.doc = doc
        self.registry: Registry[Any] = Registry().with_resource(
            DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
        )

    async def call(
        self, method: str, template: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                method,
                self.worker.url + path,
                data=io.BytesIO(body) if body is not None else None,
                headers=headers or {},
                # the bytes as given: no Content-Type of aiohttp's own when the case sends none
                skip_auto_headers=() if "Content-Type" in (headers or {}) else ("Content-Type",),
            ) as resp,
        ):
            raw = await resp.read()
            status = resp.status
            content_type = resp.content_type
        assert status < 500, (method, path, status, raw[:300])
        responses = self.doc["paths"][template][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {template} answered {status}, not documented"
        answer = json.loads(raw) if raw and content_type == "application/json" else raw
        schema = responses[str(status)].get("content", {}).get(content_type, {}).get("schema")
        if schema is not None:
            if "$ref" in schema:
                schema = {"$ref": DOC_URI + schema["$ref"]}
            Draft202012Validator(schema, registry=self.registry).validate(answer)
        return status, answer


@pytest.fixture(scope="module")
def api(worker: Worker, openapi: dict[str, Any]) -> Api:
    return Api(worker, openapi)


JSON = {"Content-Type": "application/json"}
MESSAGE = ("POST", "/v1/session/message", "/v1/session/message")
ACTION = ("POST", "/v1/session/action", "/v1/session/action")
ENVELOPE = ("GET", "/v1/session/{session_id}")
EVENTS = ("GET", "/v1/session/{session_id}/events")
STREAM = ("GET", "/v1/session/{session_id}/stream")


@pytest.mark.parametrize(
    ("method", "template", "path", "body", "headers", "status", "code"),
    [
        (*MESSAGE, b"{", JSON, 400, "malformed_json"),
        (*MESSAGE, b"{}", JSON, 422, "validation_failed"),
        (*MESSAGE, b'{"message":"x"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        # no Content-Type: not assumed to be JSON (a cross-site form or beacon could post it without a preflight)
        (*MESSAGE, b'{"message":"x"}', {}, 415, "unsupported_media_type"),
        # inputs that once answered 500: nesting 10,000 deep, an unpaired surrogate, a 5,000-digit integer
        (*MESSAGE, b'{"message":"x","metadata":' + b"[" * 10_000 + b"]" * 10_000 + b"}", JSON, 400, "malformed_json"),
        (
            *MESSAGE,
            b'{"message":"x","metadata":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001,
            JSON,
            400,
            "malformed_json",
        ),
        (*MESSAGE, b'{"message":"\\ud800"}', JSON, 400, "malformed_json"),
        (*MESSAGE, b'{"message":"x","n":' + b"7" * 5_000 + b"}", JSON, 400, "malformed_json"),
        # valid JSON that PostgreSQL cannot store
        (*MESSAGE, b'{"message":"a\\u0000b"}', JSON, 422, "unstorable_text"),
        (*MESSAGE, b'{"message":"x","metadata":{"k":"\\u0000"}}', JSON, 422, "unstorable_text"),
        (*MESSAGE, b'{"message":"' + b"x" * 1_100_000 + b'"}', JSON, 413, "payload_too_large"),
        (*MESSAGE, b'{"message":"x"}', {**JSON, "Idempotency-Key": "has space"}, 400, "invalid_idempotency_key"),
        (*ACTION, b'{"action":"dance"}', JSON, 400, "unknown_action"),
        (*ACTION, b'{"session_id":"s"}', JSON, 422, "validation_failed"),
        (*ACTION, b"nope", JSON, 400, "malformed_json"),
        (*ENVELOPE, "/v1/session/never-seen", None, None, 404, "session_not_found"),
        (*ENVELOPE, "/v1/session/bad%20id", None, None, 400, "invalid_parameter"),
        (*EVENTS, "/v1/session/never-seen/events", None, None, 404, "session_not_found"),
        (*EVENTS, "/v1/session/s/events?after=-1", None, None, 400, "invalid_parameter"),
        (*EVENTS, "/v1/session/s/events?limit=0", None, None, 400, "invalid_parameter"),
        (*EVENTS, "/v1/session/s/events?limit=abc", None, None, 400, "invalid_parameter"),
        # digits str.isdigit() accepts but int() refuses (U+00B2) or reads as another number (U+0661 = 1), and a run
        # of digits too long for int()
        (*EVENTS, "/v1/session/s/events?after=%C2%B2", None, None, 400, "invalid_parameter"),
        (*EVENTS, "/v1/session/s/events?after=%D9%A1", None, None, 400, "invalid_parameter"),
        (*EVENTS, "/v1/session/s/events?limit=" + "9" * 5_000, None, None, 400, "invalid_parameter"),
        (
            *EVENTS,
            "/v1/session/s/events",
            None,
            {"Accept": "text/event-stream", "Last-Event-ID": "9" * 5_000},
            400,
            "invalid_parameter",
        ),
        (*STREAM, "/v1/session/s/stream", None, None, 426, "upgrade_required"),
        (*STREAM, "/v1/session/s/stream?after=x", None, None, 400, "invalid_parameter"),
    ],
)
async def test_bad_input_on_every_endpoint_is_a_documented_4xx(
    api: Api,
    method: str,
    template: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str] | None,
    status: int,
    code: str,
) -> None:
    got, answer = await api.call(method, template, path, body=body, headers=headers)
    assert (got, answer["error"]["code"]) == (status, code)


async def test_good_requests_match_the_document(api: Api, iso_module: Isolated) -> None:
    session = f"api-{uuid.uuid4().hex[:8]}"
    status, accepted = await api.call(
        *MESSAGE, body=json.dumps({"session_id": session, "message": "hi"}).encode(), headers=JSON
    )
    assert status == 202 and accepted["session_id"] == session
    status, _ = await api.call(
        *ACTION, body=json.dumps({"session_id": session, "action": "next_steps"}).encode(), headers=JSON
    )
    assert status == 202
    await wait_rows(
        iso_module.settings.postgres_dsn, "SELECT 1 FROM session_events WHERE session_id = %s", (session,), 2
    )
    status, envelope = await api.call(*ENVELOPE, f"/v1/session/{session}")
    assert status == 200 and envelope["last_seq"] == 2
    assert envelope["metadata"] == {"source": "quick_action", "action": "next_steps"}
    status, page = await api.call(*EVENTS, f"/v1/session/{session}/events?limit=1")
    assert status == 200 and [e["seq"] for e in page["events"]] == [1] and page["next_after"] == 1
    status, page = await api.call(*EVENTS, f"/v1/session/{session}/events?after=1&limit=10")
    assert [e["message"] for e in page["events"]] == [
        "List the next steps we agreed on in this conversation, with who does each."
    ]
    assert page["head_seq"] == 2
    assert (await api.call("GET", "/health", "/health"))[0] == 200
    assert (await api.call("GET", "/v1/worker", "/v1/worker"))[0] == 200


async def test_an_idempotency_key_retry_returns_the_first_answer_and_stores_one_event(
    api: Api, iso_module: Isolated
) -> None:
    dsn = iso_module.settings.postgres_dsn
    key = f"retry-{uuid.uuid4()}"
    body = json.dumps({"message": "exactly once"}).encode()
    answers = [await api.call(*MESSAGE, body=body, headers={**JSON, "Idempotency-Key": key}) for _ in range(3)]
    assert {status for status, _ in answers} == {202}
    assert answers[0][1] == answers[1][1] == answers[2][1]
    session = answers[0][1]["session_id"]
    # a later event of the session proves the retries were processed (or never enqueued) before it
    await api.call(*MESSAGE, body=json.dumps({"session_id": session, "message": "after"}).encode(), headers=JSON)
    rows = await wait_rows(
        dsn, "SELECT event_id, seq FROM session_events WHERE session_id = %s ORDER BY seq", (session,), 2
    )
    assert (str(rows[0]["event_id"]), rows[0]["seq"]) == (answers[0][1]["event_id"], 1)
    assert len(rows) == 2
    # the same key with another body is refused, and enqueues nothing
    status, refused = await api.call(
        *MESSAGE, body=json.dumps({"message": "different"}).encode(), headers={**JSON, "Idempotency-Key": key}
    )
    assert (status, refused["error"]["code"]) == (422, "idempotency_key_reused")
    assert len(query(dsn, "SELECT 1 FROM session_events WHERE session_id = %s", (session,))) == 2


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/no/such/path", 404, "not_found"),
        ("POST", "/v1/no-such-endpoint", 404, "not_found"),
        ("DELETE", "/v1/session/message", 405, "method_not_allowed"),
        ("PUT", "/health", 405, "method_not_allowed"),
    ],
)
async def test_errors_of_the_router_are_in_the_json_envelope(
    worker: Worker, method: str, path: str, status: int, code: str
) -> None:
    async with aiohttp.ClientSession() as http, http.request(method, worker.url + path) as resp:
        body = await resp.json()
        assert (resp.status, resp.content_type) == (status, "application/json")
        if status == 405:
            assert resp.headers["Allow"]
    assert body["error"]["code"] == code and body["error"]["message"]


async def test_a_key_reused_after_its_record_expired_is_never_silently_dropped(api: Api, iso_module: Isolated) -> None:
    """Past SOMA_IDEMPOTENCY_TTL_SECONDS the key's Redis record is gone; its derived event id is still stored."""
    settings = iso_module.settings
    key = f"expired-{uuid.uuid4()}"
    record = f"{settings.redis_prefix}idempotency:{key}"
    body = json.dumps({"message": "once, even a week-end later"}).encode()
    status, first = await api.call(*MESSAGE, body=body, headers={**JSON, "Idempotency-Key": key})
    assert status == 202
    session = first["session_id"]
    await wait_rows(settings.postgres_dsn, "SELECT 1 FROM session_events WHERE session_id = %s", (session,), 1)

    async def expire() -> None:
        # what the record's TTL does, done now
        client = redis_client.connect(settings.redis_url)
        try:
            assert await client.delete(record) == 1
        finally:
            await client.aclose()

    await expire()
    # the same request again: its stored event is the answer; nothing is published for the store to drop
    status, again = await api.call(*MESSAGE, body=body, headers={**JSON, "Idempotency-Key": key})
    assert (status, again) == (202, first)
    await expire()
    # another request with the old key: refused, not accepted and then dropped as a duplicate
    other = json.dumps({"message": "something else"}).encode()
    status, refused = await api.call(*MESSAGE, body=other, headers={**JSON, "Idempotency-Key": key})
    assert (status, refused["error"]["code"]) == (422, "idempotency_key_reused")
    # a later event of the session proves nothing else was enqueued before it
    await api.call(*MESSAGE, body=json.dumps({"session_id": session, "message": "after"}).encode(), headers=JSON)
    rows = await wait_rows(
        settings.postgres_dsn,
        "SELECT seq, payload FROM session_events WHERE session_id = %s ORDER BY seq",
        (session,),
        2,
    )
    assert [(r["seq"], r["payload"]["message"]) for r in rows] == [(1, "once, even a week-end later"), (2, "after")]


async def test_stopping_a_reply_where_nothing_replies_is_409_replies_off(worker: Worker) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{worker.url}/v1/session/quiet-1/stop") as response:
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "replies_off"


async def test_a_voice_message_where_nothing_transcribes_is_409_voice_off(worker: Worker) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{worker.url}/v1/session/quiet-1/voice", data=b"RIFF....WAVE", headers={"Content-Type": "audio/wav"}
        ) as response,
    ):
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "voice_off"
