"""Publishing events: validated before anything is sent, done only once the broker has acked."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from aiokafka.errors import KafkaError

from app import events, schemas, tracing
from app.errors import ApiError, UpstreamUnavailable
from app.producer import IdempotentProducer

if TYPE_CHECKING:
    from app.faust_app import SomaApp


async def send_event(app: SomaApp, topic: str, event: dict[str, Any], schema: str) -> Any:
    """Send ``event`` keyed by its session to ``topic``; returns the broker's RecordMetadata.

    Raises EventInvalid before sending when the event breaks ``schema``; KafkaError or TimeoutError when
    the broker did not ack within ``SOMA_KAFKA_PUBLISH_TIMEOUT_SECONDS`` (both transient).
    """
    schemas.validate(schema, event)
    # straight to the worker's aiokafka producer (acks=all, idempotent, keyed by session like faust would):
    # faust's Topic.send wraps each record in futures and callbacks that cost ~10 % of a worker taking POSTs
    producer = cast(IdempotentProducer, app.producer).client()
    name = app.settings.topic(topic)
    key = str(event["session_id"]).encode()
    headers = events.headers(event, schema)
    if tracing.enabled:
        return await _traced_send(app, producer, name, key, event, headers)
    async with asyncio.timeout(app.settings.kafka_publish_timeout_seconds):
        pending = await producer.send(name, value=events.encode(event), key=key, headers=headers)
        return await pending


async def _traced_send(
    app: SomaApp, producer: Any, name: str, key: bytes, event: dict[str, Any], headers: list[tuple[str, bytes]]
) -> Any:
    """:func:`send_event`'s send within its span, whose trace context the record carries in its headers."""
    span = tracing.send_span(name, key, headers)
    try:
        async with asyncio.timeout(app.settings.kafka_publish_timeout_seconds):
            pending = await producer.send(name, value=events.encode(event), key=key, headers=headers)
            metadata = await pending
    except BaseException as exc:
        tracing.failed(span, exc)
        raise
    tracing.sent(span, metadata)
    return metadata


class Overloaded(ApiError):
    """More client publishes wait for the broker's ack than ``SOMA_MAX_INFLIGHT_PUBLISHES``: refused at once."""

    code = "overloaded"
    retry_after = 1


async def publish(app: SomaApp, topic: str, event: dict[str, Any], schema: str) -> Any:
    """:func:`send_event` for a client's request: a broker failure becomes 503 ``enqueue_failed``.

    Past capacity (the broker slow or away, or more requests than it acks) the worker sheds load early:
    a request beyond ``SOMA_MAX_INFLIGHT_PUBLISHES`` waiting ones is answered 503 ``overloaded`` with
    Retry-After at once, so memory and answer times stay bounded; nothing it refuses was accepted. So is
    a request while storage is more than ``SOMA_MAX_STORAGE_LAG_SECONDS`` behind (503 ``storage_behind``,
    app/storage_lag.py): the backlog of accepted events stays bounded by time.
    """
    app.storage_lag.check()
    resources = app.resources
    limit = app.settings.max_inflight_publishes
    if resources.publishes_in_flight >= limit:
        resources.overloaded += 1
        raise Overloaded(f"{limit} messages are waiting for the broker already; retry shortly")
    resources.publishes_in_flight += 1
    try:
        sent = await send_event(app, topic, event, schema)
        app.storage_lag.accepted(sent.topic, sent.partition, sent.offset)
        app.metrics.published(topic, ok=True)
        return sent
    except (TimeoutError, KafkaError) as exc:
        app.metrics.published(topic, ok=False)
        raise UpstreamUnavailable(f"Unable to enqueue message: {type(exc).__name__}") from exc
    finally:
        resources.publishes_in_flight -= 1
