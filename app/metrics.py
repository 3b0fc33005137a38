"""The worker's Prometheus metrics (aioprometheus), served by ``GET /metrics``.

Two kinds, so that recording costs the hot path nothing measurable:

- what happens per request or per batch is observed where it happens (a counter or histogram per request,
  per batch of stored events, per dead letter, per stream close);
- what happens per event delivered, per rate-limit decision, per token, per connection, is already counted in
  plain integers by the objects that do it (the stream counters below, the rate limiter, the authenticator,
  the policy client, the storage-lag tracker, the HTTP server): :meth:`Metrics.collect` copies them into their
  series when Prometheus scrapes, together with gauges read at that moment (consumer lag, table recovery,
  watched sessions, open streams).

``SOMA_METRICS_ENABLED=0`` turns the per-request and per-batch observations off (``/metrics`` then answers
404), to measure what they cost.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter as Tally
from typing import TYPE_CHECKING, Any, cast

from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from aioprometheus.renderer import render

if TYPE_CHECKING:
    from app.faust_app import SomaApp

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class StreamCounts:
    """Events written to streams and streams closed by the server, counted as plain integers on the hot path."""

    def __init__(self) -> None:
        self.delivered: dict[str, int] = {"ws": 0, "sse": 0}
        self.closed: Tally[tuple[str, str]] = Tally()  # (transport, close code or reason)


streams = StreamCounts()


class Metrics:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._requests: Tally[tuple[str, str, int]] = Tally()
        self._published: Tally[tuple[str, bool]] = Tally()
        self.registry = Registry()
        # each worker's own registry (not aioprometheus' global one): a process may build more than one app
        counter = functools.partial(Counter, registry=self.registry)
        gauge = functools.partial(Gauge, registry=self.registry)
        histogram = functools.partial(Histogram, registry=self.registry)
        # the seed gateway's names, where they fit
        self.requests = counter("gateway_requests_total", "HTTP requests answered, by method, route and status")
        self.request_latency = histogram(
            "gateway_request_latency_seconds",
            "time to answer an HTTP request (streams: until their response starts), by route",
            buckets=LATENCY_BUCKETS,
        )
        self.kafka_publish = counter(
            "gateway_kafka_publish_total", "client messages published to Kafka, by topic and status (ok, failed)"
        )
        self.streamed = counter("gateway_streamed_events_total", "events written to client streams, by transport")
        self.active_websockets = gauge("gateway_active_websockets", "WebSocket streams open on this worker")
        # what an operator needs beside them
        self.processed = counter("soma_events_processed_total", "events stored by an agent, by agent")
        self.failed = counter(
            "soma_events_failed_total", "events an agent could not store, by agent and outcome (dead_lettered)"
        )
        self.batch_size = histogram("soma_batch_size", "events per stored batch, by agent", buckets=BATCH_BUCKETS)
        self.store_latency = histogram(
            "soma_store_latency_seconds", "time to store a batch, retries included, by agent", buckets=LATENCY_BUCKETS
        )
        self.dead_letters = counter("soma_dead_letters_total", "records dead-lettered, by topic and error class")
        self.retrying = gauge("soma_retries_in_progress", "calls waiting out a transient failure right now")
        self.consumer_lag = gauge(
            "soma_consumer_lag", "records behind the partition's end (high watermark - committed), by topic, partition"
        )
        self.recovery = gauge("soma_table_recovery_remaining", "changelog records left to recover, by kind")
        self.streams_open = gauge("soma_streams_open", "client streams open on this worker (WebSocket and SSE)")
        self.watched = gauge("soma_feed_watched_sessions", "sessions this worker's feed subscription watches")
        self.stream_closes = counter(
            "soma_stream_closes_total", "streams closed by the server, by transport and code (or reason)"
        )
        self.load_shed = counter("soma_load_shed_total", "requests refused to shed load, by reason")
        self.rate_limited = counter("soma_rate_limit_rejections_total", "requests refused by a rate limit")
        self.rate_limit_open = counter(
            "soma_rate_limit_failed_open_total", "requests let through because Redis did not answer the limiter"
        )
        self.auth_refused = counter("soma_auth_refused_total", "requests refused for their credentials")
        self.opa = counter("soma_opa_decisions_total", "policy decisions asked of OPA, by result (allowed, denied)")
        self.connections = gauge("soma_http_connections", "HTTP connections, by state (open, refused, evicted)")
        # the responder (agents/responder.py): tallied per reply, copied at scrape
        self._replies: Tally[str] = Tally()
        self._reply_tokens = 0
        self.replies_running = 0
        self.replies = counter("soma_replies_total", "replies finished by this worker, by status of their final")
        self.reply_tokens = counter("soma_reply_tokens_total", "tokens the model wrote into replies on this worker")
        self.replies_open = gauge("soma_replies_in_progress", "replies being written by this worker right now")
        # voice messages (views/voice.py): tallied per message, copied at scrape
        self._voice: Tally[str] = Tally()
        self._voice_seconds = 0.0
        self.voice = counter(
            "soma_voice_messages_total",
            "voice messages by outcome: posted, or why not (no_speech, audio_unreadable, unavailable)",
        )
        self.voice_seconds = counter(
            "soma_transcription_seconds_total", "time the speech server took to transcribe, summed"
        )

    def request(self, method: str, route: str, status: int, seconds: float | None) -> None:
        if not self.enabled:
            return
        # a tally (0.2 µs) rather than the counter's inc (3.7 µs, its labels checked each time): copied at scrape
        self._requests[method, route, status] += 1
        if seconds is not None:
            self.request_latency.observe({"route": route}, seconds)

    def published(self, topic: str, ok: bool) -> None:
        if self.enabled:
            self._published[topic, ok] += 1

    def stored(self, agent: str, events: int, seconds: float) -> None:
        if self.enabled:
            labels = {"agent": agent}
            self.processed.add(labels, events)
            self.batch_size.observe(labels, events)
            self.store_latency.observe(labels, seconds)

    def dead_lettered(self, agent: str, topic: str, error_class: str) -> None:
        if self.enabled:
            self.failed.inc({"agent": agent, "outcome": "dead_lettered"})
            self.dead_letters.inc({"topic": topic, "error_class": error_class})

    def replied(self, status: str, tokens: int) -> None:
        """A reply's final was published (once per reply: a few per second at most, so always counted)."""
        self._replies[status] += 1
        self._reply_tokens += tokens

    def voiced(self, outcome: str, seconds: float) -> None:
        """A voice message was transcribed (or was not: ``outcome`` says why)."""
        self._voice[outcome] += 1
        self._voice_seconds += seconds

    def collect(self, app: SomaApp) -> None:
        """Copy the counts kept elsewhere into their series and read the gauges: at scrape time."""
        for (method, route, status), count in self._requests.items():
            self.requests.set({"method": method, "route": route, "status": str(status)}, count)
        for (topic, ok), count in self._published.items():
            self.kafka_publish.set({"topic": topic, "status": "ok" if ok else "failed"}, count)
        for transport, count in streams.delivered.items():
            self.streamed.set({"transport": transport}, count)
        for (transport, code), count in streams.closed.items():
            self.stream_closes.set({"transport": transport, "code": code}, count)
        from agents.boundary import retrying
        from views.connections import registry

        self.retrying.set({}, retrying())
        self.streams_open.set({}, len(registry))
        self.active_websockets.set({}, registry.count("ws"))
        self.watched.set({}, app.resources.feed_hub().watched)
        self.load_shed.set({"reason": "storage_behind"}, app.storage_lag.refused)
        self.load_shed.set({"reason": "overloaded"}, app.resources.overloaded)
        self.rate_limited.set({}, app.rate_limits.refused)
        self.rate_limit_open.set({}, app.rate_limits.failed_open)
        self.auth_refused.set({}, app.auth.refused)
        self.opa.set({"result": "allowed"}, app.policy.asked - app.policy.denied)
        self.opa.set({"result": "denied"}, app.policy.denied)
        counts = _connection_counts(app)
        for state in ("open", "refused", "evicted"):
            if state in counts:
                self.connections.set({"state": state}, counts[state])
        for outcome, count in self._replies.items():
            self.replies.set({"status": outcome}, count)
        self.reply_tokens.set({}, self._reply_tokens)
        self.replies_open.set({}, self.replies_running)
        for outcome, count in self._voice.items():
            self.voice.set({"outcome": outcome}, count)
        self.voice_seconds.set({}, self._voice_seconds)
        self._consumer(app)

    def _consumer(self, app: SomaApp) -> None:
        try:
            consumer: Any = app.consumer
            assigned = consumer.assignment()
        except Exception:  # not started yet, or stopping: no partitions to report
            return
        for tp in assigned:
            try:
                high = consumer.highwater(tp)
            except Exception:  # noqa: S112 - revoked meanwhile: no highwater to report
                continue
            if high is None:
                continue
            committed = consumer._committed_offset.get(tp) or 0
            self.consumer_lag.set({"topic": tp.topic, "partition": str(tp.partition)}, max(high - committed, 0))
        recovery = cast(Any, app.tables).recovery
        self.recovery.set({"kind": "active"}, recovery.active_remaining_total())
        self.recovery.set({"kind": "standby"}, recovery.standby_remaining_total())

    def render(self, accept: list[str]) -> tuple[bytes, dict[str, str]]:
        content, headers = render(self.registry, accept)
        return content, dict(headers)


def _connection_counts(app: SomaApp) -> dict[str, int]:
    counts = getattr(app.web, "connection_counts", None)
    found: dict[str, int] = counts() if callable(counts) else {}
    return found
