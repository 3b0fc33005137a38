"""OpenTelemetry traces exported by real workers to a real Jaeger (v2, OTLP/HTTP in, its query API read back):
one trace from a client's POST through the Kafka hop, the agent, PostgreSQL and the Redis feed to a viewer on
another worker; a tool request's run and result; a dead letter. And off (the SDK not even loaded) when no
OTEL_* variable asks for traces."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app import events, feed, redis_client, tracing
from app.feed_hub import FeedHub, FeedItem, FeedListener
from deploy.localstack.base import free_port
from deploy.localstack.jaeger_server import JaegerServer
from tests.support.client import post_message
from tests.support.db import wait_rows
from tests.support.events import message, record, tool_request
from tests.support.isolation import Isolated
from tests.support.kafka import create_topic, produce
from tests.support.private import private_jaeger
from tests.support.worker import ROOT, Worker, running_pair

Span = dict[str, Any]


@pytest.fixture(scope="module")
def jaeger(iso_module: Isolated) -> Iterator[JaegerServer]:
    with private_jaeger(iso_module.settings) as server:
        yield server


@pytest.fixture(scope="module")
async def pair(iso_module: Isolated, jaeger: JaegerServer, artifacts: Path) -> AsyncIterator[tuple[Worker, Worker]]:
    env = iso_module.env(
        # http_fetch may call the test's server on loopback
        SOMA_HTTP_FETCH_ALLOWLIST="127.0.0.1",
        SOMA_HTTP_FETCH_ALLOW_PRIVATE="1",
        SOMA_HTTP_FETCH_PORTS="*",
    )
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=jaeger.otlp_endpoint,
        OTEL_SERVICE_NAME=f"soma-{iso_module.tag}",
        OTEL_BSP_SCHEDULE_DELAY="100",  # export every 100 ms (the default waits 5 s)
    )
    async with running_pair(env, artifacts / "logs", f"traces-{iso_module.tag}") as workers:
        yield workers


def client_context() -> tuple[str, str, str]:
    """A trace of the test's own, as a client that traces sends it: (trace id, span id, traceparent)."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


async def trace_spans(jaeger: JaegerServer, trace_id: str, wanted: set[str], within: float = 60.0) -> list[Span]:
    """The spans of ``trace_id`` once Jaeger has every operation of ``wanted``, each span with its process."""
    deadline = time.monotonic() + within
    spans: list[Span] = []
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{jaeger.url}/api/traces/{trace_id}") as response:
                body = await response.json() if response.status == 200 else {"data": []}
            if body["data"]:
                found = body["data"][0]
                processes = found["processes"]
                spans = [{**span, "process": processes[span["processID"]]} for span in found["spans"]]
                if wanted <= {span["operationName"] for span in spans}:
                    return spans
            assert time.monotonic() < deadline, (
                f"trace {trace_id} lacks {wanted - {s['operationName'] for s in spans}}; has "
                f"{sorted(s['operationName'] for s in spans)}"
            )
            await asyncio.sleep(0.2)


def one(spans: list[Span], name: str) -> Span:
    named = [span for span in spans if span["operationName"] == name]
    assert len(named) == 1, f"{len(named)} spans named {name!r}"
    return named[0]


def parent_of(span: Span) -> str:
    (parent,) = [ref["spanID"] for ref in span["references"] if ref["refType"] == "CHILD_OF"]
    return str(parent)


def tags(span: Span) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span["tags"]}


def instance(span: Span) -> str:
    return str(tags(span["process"])["service.instance.id"])


async def test_one_trace_runs_from_the_post_through_kafka_and_postgres_to_a_viewer_on_another_worker(
    iso_module: Isolated, pair: tuple[Worker, Worker], jaeger: JaegerServer
) -> None:
    a, b = pair
    session = f"traces-{uuid.uuid4().hex[:8]}"
    trace_id, client_span, traceparent = client_context()
    # a viewer on B; the message posted to A, continuing the client's trace
    stream = f"{b.url.replace('http', 'ws')}/v1/session/{session}/stream"
    async with aiohttp.ClientSession() as http, http.ws_connect(stream) as ws:
        status, answer = await post_message(
            a.url, {"session_id": session, "message": "follow me"}, {"traceparent": traceparent}
        )
        assert status == 202, answer
        while True:
            frame = json.loads((await ws.receive(timeout=30)).data)
            if frame.get("event_id") == answer["event_id"]:
                break
    inbound = iso_module.topic("conversation.inbound")
    names = {
        "post": "POST /v1/session/message",
        "send": f"send {inbound}",
        "process": f"process {inbound}",
        "store": "store events",
        "deliver": "deliver session feed",
    }
    spans = await trace_spans(jaeger, trace_id, set(names.values()))
    post, send, process, store, deliver = (one(spans, name) for name in names.values())

    # the chain, parent by parent, from the client's span to the viewer's worker
    assert parent_of(post) == client_span
    assert parent_of(send) == post["spanID"]
    assert parent_of(process) == send["spanID"]  # across the Kafka hop: the record's traceparent header
    assert parent_of(store) == process["spanID"]
    assert parent_of(deliver) == process["spanID"]  # across the Redis hop: the feed message's context
    assert {span["traceID"] for span in spans} == {trace_id}

    # what each span says is what happened
    assert tags(post)["http.response.status_code"] == 202
    assert tags(post)["http.route"] == "/v1/session/message"
    assert (tags(send)["span.kind"], tags(process)["span.kind"]) == ("producer", "consumer")
    # the record the POST sent is the record the agent processed
    assert tags(process)["messaging.kafka.offset"] == tags(send)["messaging.kafka.offset"]
    assert tags(process)["messaging.destination.partition.id"] == tags(send)["messaging.destination.partition.id"]
    assert tags(process)["soma.event_id"] == answer["event_id"]
    assert tags(process)["soma.seq"] == frame["seq"]
    assert tags(store)["db.system.name"] == "postgresql" and tags(store)["soma.duplicate"] is False
    assert tags(deliver)["soma.seq"] == frame["seq"] and tags(deliver)["soma.viewers"] == 1
    # the request was served by A, the viewer's copy delivered by B
    assert instance(post).endswith(f":{a.port}")
    assert instance(deliver).endswith(f":{b.port}")
    assert post["process"]["serviceName"] == f"soma-{iso_module.tag}"
    # children start within their parents' time (the store within the processing)
    assert process["startTime"] <= store["startTime"] <= store["startTime"] + store["duration"]
    assert store["startTime"] + store["duration"] <= process["startTime"] + process["duration"]


async def test_a_tool_requests_run_its_outgoing_call_and_its_result_are_one_trace(
    iso_module: Isolated, pair: tuple[Worker, Worker], jaeger: JaegerServer
) -> None:
    heard: list[str] = []

    async def page(request: web.Request) -> web.Response:
        heard.append(request.headers.get("traceparent", ""))
        return web.Response(text="traced")

    app = web.Application()
    app.add_routes([web.get("/page", page)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        settings = iso_module.settings
        trace_id, client_span, traceparent = client_context()
        request = tool_request(
            f"traces-tool-{uuid.uuid4().hex[:8]}", "http_fetch", {"url": f"http://127.0.0.1:{port}/page"}
        )
        key, value, headers = record(request, "tool_request")
        topic = iso_module.topic("tool.requests")
        await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
        await produce(
            settings.kafka_bootstrap, topic, [(key, value, [*headers, ("traceparent", traceparent.encode())])]
        )
        results = iso_module.topic("tool.results")
        spans = await trace_spans(
            jaeger, trace_id, {f"process {topic}", "GET", f"send {results}", f"process {results}"}
        )
    finally:
        await runner.cleanup()
    requested, fetch, send, answered = (
        one(spans, name) for name in (f"process {topic}", "GET", f"send {results}", f"process {results}")
    )
    assert parent_of(requested) == client_span
    assert parent_of(fetch) == requested["spanID"]  # the tool's HTTP call (aiohttp client instrumentation)
    assert parent_of(send) == requested["spanID"]
    assert parent_of(answered) == send["spanID"]
    assert tags(fetch)["http.status_code"] == 200, tags(fetch)
    # the called server got the trace context in the request's headers
    assert len(heard) == 1 and heard[0].startswith(f"00-{trace_id}-{fetch['spanID']}-")
    rows = await wait_rows(
        settings.postgres_dsn,
        "SELECT payload FROM session_events WHERE session_id = %s AND type = 'tool.result'",
        (request["session_id"],),
        1,
    )
    assert rows[0]["payload"]["payload"]["body"] == "traced"


async def test_a_dead_lettered_record_is_an_error_span_of_its_trace(
    iso_module: Isolated, pair: tuple[Worker, Worker], jaeger: JaegerServer
) -> None:
    settings = iso_module.settings
    trace_id, client_span, traceparent = client_context()
    topic = iso_module.topic("conversation.inbound")
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    await produce(
        settings.kafka_bootstrap, topic, [(b"traces-poison", b"{oops", [("traceparent", traceparent.encode())])]
    )
    (span,) = await trace_spans(jaeger, trace_id, {f"process {topic}"})
    assert parent_of(span) == client_span
    assert tags(span)["soma.dead_lettered"] is True
    assert tags(span)["otel.status_code"] == "ERROR" and tags(span)["error"] is True
    assert any(field["key"] == "exception.type" for log in span["logs"] for field in log["fields"])


async def test_a_worker_with_traces_off_delivers_feed_messages_that_carry_a_trace_context(
    iso: Isolated,
) -> None:
    """Workers of one group need not agree: a viewer's worker without traces strips the context of a message
    published by a worker with traces on, and delivers the event as stored."""
    assert not tracing.enabled
    settings = iso.settings
    session = f"traces-feed-{uuid.uuid4().hex[:8]}"
    event = {**message(session, "carried"), "seq": 1}
    payload = events.encode(event)
    carried = (
        tracing.FEED_MARK + json.dumps({"traceparent": client_context()[2]}).encode() + tracing.FEED_MARK + payload
    )
    hub = FeedHub(settings)
    got: asyncio.Queue[FeedItem] = asyncio.Queue()
    listener = FeedListener(got.put_nowait, lambda: None)
    redis = redis_client.connect(settings.redis_url)
    try:
        await hub.subscribe(session, listener)
        await feed.publish(
            redis, settings.redis_prefix, [event, {**event, "seq": 2}], [carried, events.encode({**event, "seq": 2})]
        )
        first, second = await asyncio.wait_for(got.get(), 10), await asyncio.wait_for(got.get(), 10)
    finally:
        await hub.unsubscribe(session, listener)
        await hub.close()
        await redis.aclose()
    assert (first.raw, first.event, first.seq) == (payload, event, 1)
    assert second.seq == 2


def test_traces_are_off_without_otel_variables_and_the_sdk_is_never_imported() -> None:
    """Off costs nothing: a worker's modules, configured from an environment without OTEL_*, leave the tracing
    SDK unloaded and no tracer provider set (every place that would make a span reads one flag). redis-py
    imports the SDK's metrics part when it is installed; its telemetry stays off unless a program turns it on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    script = (
        "import sys, app.faust_app, agents.pipeline, agents.tool_requests, views.base, app.feed_hub, app.tracing as t\n"
        "from opentelemetry import trace\n"
        "print(t.configure(), t.enabled, 'opentelemetry.sdk.trace' in sys.modules,"
        " type(trace.get_tracer_provider()).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False", "ProxyTracerProvider"], out.stderr


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_the_standard_variables_decide_whether_traces_are_on(environ: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(environ) is wanted


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin is not supported"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTLP over grpc is not supported",
        ),
    ],
)
def test_what_the_exporter_cannot_do_is_refused_before_anything_is_traced(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(tracing.TracingError, match=message):
        tracing.configure(environ)
    assert not tracing.enabled
