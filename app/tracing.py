"""OpenTelemetry traces: one trace from a client's POST to the viewers that receive the stored event.

    POST /v1/session/message                      SERVER    the worker that took the request
    └─ send conversation.inbound                  PRODUCER  W3C trace context in the record's headers
       └─ process conversation.inbound            CONSUMER  the worker that consumes the partition
          ├─ store events                         CLIENT    PostgreSQL: the batch's transaction
          └─ deliver session feed                 CONSUMER  every worker where someone watches the session
                                                            (the context travels in the Redis feed message)

A tool request's run, its OPA decision and its result's send are children of its ``process tool.requests``
span, and the result's own processing follows on; outgoing HTTP calls (JWKS, OPA, tools) are spans of the
aiohttp client instrumentation, children of the span they are made in.

Configured by the standard variables only (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/):
traces are on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or an OTLP endpoint is
set (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), unless ``OTEL_SDK_DISABLED=true``.
The SDK then reads the rest itself (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*`` headers, timeout, compression; ``OTEL_PROPAGATORS``). The OTLP exporter
speaks http/protobuf. Spans are exported from the SDK's own thread, never on the event loop.

Off (no variable set), the SDK is not even imported: each place that would make a span reads ``enabled`` and
goes on, so traces cost nothing when nobody collects them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import NoOpTracer, Span, SpanKind, Status, StatusCode

from app.errors import SettingsError

if TYPE_CHECKING:
    import aiohttp

    from app.repository import BatchResult, Incoming

log = logging.getLogger(__name__)
T = TypeVar("T")

enabled = False
_tracer: trace.Tracer = NoOpTracer()
_provider: Any = None  # the SDK's TracerProvider, when on

# a feed message that carries a trace context: MARK, the context's JSON, MARK, the event's JSON. An event's JSON
# always starts with "{", and JSON escapes every control character, so the marks cannot occur inside either part.
FEED_MARK = b"\x1e"
EXPORTERS = ("otlp", "console")


class TracingError(SettingsError):
    """The OTEL_* variables ask for something this service cannot do (an unknown exporter, OTLP over gRPC)."""


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(environ: Mapping[str, str] | None = None, instance: str | None = None) -> bool:
    """Turn traces on if the variables ask for it (once per process); whether they are on.

    ``instance``: the worker's ``service.instance.id`` (host:port), unless OTEL_RESOURCE_ATTRIBUTES sets one.
    Raises TracingError for settings it cannot honour, so a worker asked for traces never runs without them.
    """
    global enabled, _tracer, _provider
    env = os.environ if environ is None else environ
    if enabled or not wanted(env):
        return enabled
    # imported only when traces are on
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    names = [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise TracingError(f"OTEL_TRACES_EXPORTER={','.join(unknown)} is not supported; use otlp or console")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = protocol or "http/protobuf"
    if "otlp" in names and protocol != "http/protobuf":
        raise TracingError(f"OTLP over {protocol} is not supported: the exporter speaks http/protobuf (port 4318)")
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "somaagent01"}))
    # the SDK names each process with a random UUID; host:port says which worker (unless the variables name it)
    if instance is not None and f"{SERVICE_INSTANCE_ID}=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        resource = resource.merge(Resource({SERVICE_INSTANCE_ID: f"{socket.gethostname()}:{instance}"}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER(_ARG)
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout, compression from OTEL_EXPORTER_OTLP_*
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* for its queue and delays
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("somaagent01")
    enabled = True
    log.info("traces on: %s exporter(s), service %s", ",".join(names), resource.attributes.get(SERVICE_NAME))
    return True


def shutdown() -> None:
    """Export what is buffered (blocks for up to the exporter's timeout: call it off the event loop)."""
    if _provider is not None:
        _provider.shutdown()


def client_trace_configs() -> list[aiohttp.TraceConfig]:
    """The aiohttp client's tracing hooks (a span per outgoing request, trace context in its headers)."""
    if not enabled:
        return []
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config

    return [create_trace_config(tracer_provider=_provider)]


# -- HTTP ----------------------------------------------------------------------------------------------------------


@contextmanager
def server_span(method: str, route: str, path: str, headers: Mapping[str, str], remote: str | None) -> Iterator[Span]:
    """The span of one HTTP request, current while it is handled; continues a trace the client sent."""
    attributes = {"http.request.method": method, "http.route": route, "url.path": path}
    if remote is not None:
        attributes["client.address"] = remote
    with _tracer.start_as_current_span(
        f"{method} {route}", context=propagate.extract(headers), kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span


def answered(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


# -- Kafka ---------------------------------------------------------------------------------------------------------


def send_span(topic: str, key: bytes, headers: list[tuple[str, bytes]]) -> Span:
    """Start the span of a record's send (a child of the current span) and put its context in ``headers``."""
    span = _tracer.start_span(
        f"send {topic}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
            "messaging.kafka.message.key": key.decode(errors="replace"),
        },
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    headers.extend((name, value.encode()) for name, value in carrier.items())
    return span


def sent(span: Span, metadata: Any) -> None:
    span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
    span.set_attribute("messaging.kafka.offset", metadata.offset)
    span.end()


def failed(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.end()


def _record_context(headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None) -> otel_context.Context:
    """The trace context a record's headers carry (an empty one when they carry none)."""
    fields = propagate.get_global_textmap().fields
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    carrier = {name: value.decode(errors="replace") for name, value in pairs if name in fields and value is not None}
    return propagate.extract(carrier)


def process_span(message: Any) -> Span:
    """Start the span of one consumed record's processing, a child of the span that sent it."""
    return _tracer.start_span(
        f"process {message.topic}",
        context=_record_context(message.headers),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": message.topic,
            "messaging.destination.partition.id": str(message.partition),
            "messaging.kafka.offset": message.offset,
            "messaging.kafka.message.key": (message.key or b"").decode(errors="replace"),
        },
    )


def dead_lettered(span: Span | None, message: Any, exc: BaseException) -> None:
    """Mark the processing span of a record sent to its dead-letter topic (one is made if it had none yet)."""
    if span is None:
        span = process_span(message)
        ending = True
    else:
        ending = False
    span.record_exception(exc)
    span.set_attribute("soma.dead_lettered", True)
    span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {type(exc).__name__}"))
    if ending:
        span.end()


def end_all(items: Sequence[Incoming]) -> None:
    for item in items:
        if item.span is not None:
            item.span.end()


@contextmanager
def current(span: Span | None) -> Iterator[None]:
    """``span`` is the current one within (spans made meanwhile are its children)."""
    if span is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


async def within(span: Span | None, call: Awaitable[T]) -> T:
    """Await ``call`` with ``span`` current (``call`` as it is when ``span`` is None)."""
    with current(span):
        return await call


# -- the store and the session feed --------------------------------------------------------------------------------


def stored(items: Sequence[Incoming], result: BatchResult, began_ns: int) -> dict[str, Span]:
    """Record the batch's transaction as a span of each sampled event's processing; those processing spans, by
    event id, for :func:`feed_payloads` (a feed message carries its event's processing context)."""
    ended_ns = time.time_ns()
    seqs = {event["event_id"]: event["seq"] for event in result.stored}
    sampled: dict[str, Span] = {}
    for item in items:
        parent = item.span
        if parent is None or not parent.is_recording():
            continue  # not sampled: no child span, and its feed message goes out plain
        event_id = item.event["event_id"]
        seq = seqs.get(event_id)
        if seq is not None:
            parent.set_attribute("soma.seq", seq)
        parent.set_attribute("soma.event_id", event_id)
        parent.set_attribute("soma.session_id", item.event["session_id"])
        _tracer.start_span(
            "store events",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            start_time=began_ns,
            attributes={
                "db.system.name": "postgresql",
                "db.operation.name": "INSERT",
                "db.collection.name": "events",
                "db.operation.batch.size": len(items),
                "soma.duplicate": seq is None,
            },
        ).end(end_time=ended_ns)
        sampled[event_id] = parent
    return sampled


def feed_payloads(fed: Sequence[dict[str, Any]], encoded: Sequence[bytes], spans: Mapping[str, Span]) -> list[bytes]:
    """The feed messages of ``fed``: each event's JSON, after its processing span's context when it has one."""
    payloads = []
    for event, payload in zip(fed, encoded, strict=True):
        span = spans.get(event["event_id"])
        if span is None:
            payloads.append(payload)
            continue
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        payloads.append(FEED_MARK + orjson.dumps(carrier) + FEED_MARK + payload)
    return payloads


def split_feed_message(data: bytes) -> tuple[dict[str, str] | None, bytes]:
    """A feed message's trace context (None if it carries none) and the event's JSON."""
    if data[:1] != FEED_MARK:
        return None, data
    end = data.index(FEED_MARK, 1)
    carrier = orjson.loads(data[1:end])
    return (carrier if isinstance(carrier, dict) else None), data[end + 1 :]


def delivery_span(carrier: Mapping[str, str], session_id: str, seq: int, viewers: int) -> Span:
    """The span of handing a feed message to this worker's viewers of its session."""
    return _tracer.start_span(
        "deliver session feed",
        context=propagate.extract(carrier),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "redis",
            "messaging.operation.type": "process",
            "messaging.destination.name": "session feed",
            "soma.session_id": session_id,
            "soma.seq": seq,
            "soma.viewers": viewers,
        },
    )
