"""Batching agents: gather a topic's events, store each batch once, update tables and the feed, then ack.

Events are read from a ``noack`` stream and acknowledged by hand only after their batch is committed to
Postgres, published to the session feed and handed to the agent's after-store step: an offset can never
be committed for an event that is not stored. A crash replays at most the unacknowledged events, which
the idempotent store recognises by ``event_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents.boundary import PERMANENT, decode, retry_transient, send_to_dead_letter
from agents.context import AgentContext
from app import events, feed, retry, tracing
from app.errors import EventInvalid
from app.repository import BatchResult, Incoming, Source, store_batch
from tables.sessions import mirror

if TYPE_CHECKING:
    from faust.types import EventT, StreamT

log = logging.getLogger(__name__)

AfterStore = Callable[[AgentContext, BatchResult, list[Incoming]], Awaitable[None]]
# an error of no known kind is retried this many times on a lone event, then dead-lettered
UNKNOWN_ERROR_ATTEMPTS = 5


@dataclass(frozen=True)
class Kind:
    """How the events of one input topic are decoded, completed and followed up."""

    topic: str  # logical name, without the settings' prefix
    schema: str
    defaults: dict[str, str] = field(default_factory=dict)  # e.g. type/role of tool events
    after_store: AfterStore | None = None


class Backlog:
    """Events read but not processed yet, at most ``limit`` of them: the stream waits while it is full.

    Waiting costs one future per drained batch, not per event (an asyncio.Queue at its limit cost an
    ``ensure_future`` and an ``asyncio.wait`` for every event of a busy stream).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: deque[EventT[bytes]] = deque()
        self._arrived: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None

    def put(self, event: EventT[bytes]) -> None:
        self.events.append(event)
        _wake(self._arrived)

    async def room(self, processor: asyncio.Task[None]) -> None:
        """Return once the backlog is below its limit; re-raise the processor's crash if it dies meanwhile."""
        while len(self.events) >= self.limit:
            if processor.done():
                processor.result()  # re-raises the processor's crash so faust's supervisor restarts the agent
                raise RuntimeError(f"{processor.get_name()} stopped")
            self._room = asyncio.get_running_loop().create_future()
            await asyncio.wait({self._room, processor}, return_when=asyncio.FIRST_COMPLETED)

    async def arrived(self) -> None:
        """Return once at least one event waits."""
        while not self.events:
            self._arrived = asyncio.get_running_loop().create_future()
            await self._arrived

    def take(self, count: int) -> list[EventT[bytes]]:
        batch = [self.events.popleft() for _ in range(min(count, len(self.events)))]
        _wake(self._room)
        return batch


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def consume(ctx: AgentContext, stream: StreamT[bytes], kind: Kind) -> None:
    """The body of an agent: feed a batch processor from the stream until the agent stops."""
    events: StreamT[bytes] = stream.noack()  # type: ignore[attr-defined]
    backlog = Backlog(2 * ctx.settings.batch_max)
    processor = asyncio.create_task(_process_forever(ctx, events, kind, backlog), name=f"batches of {kind.topic}")
    processor.add_done_callback(_report_crash)
    try:
        async for event in events.events():
            if len(backlog.events) >= backlog.limit:
                await backlog.room(processor)
            backlog.put(event)
    finally:
        processor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await processor
        # the agent stops (shutdown): the session tables get what this worker stored, before it leaves
        mirror.write_out()


def _report_crash(processor: asyncio.Task[None]) -> None:
    if not processor.cancelled() and processor.exception() is not None:
        log.error("%s crashed; the agent restarts it", processor.get_name(), exc_info=processor.exception())


async def _process_forever(ctx: AgentContext, stream: StreamT[bytes], kind: Kind, backlog: Backlog) -> None:
    settings = ctx.settings
    while True:
        await backlog.arrived()
        if settings.batch_within_seconds > 0 and len(backlog.events) < settings.batch_max:
            await asyncio.sleep(settings.batch_within_seconds)
        batch = backlog.take(settings.batch_max)
        await _process_until_done(ctx, kind, batch)
        for event in batch:
            await stream.ack(event)
        ctx.storage_lag.processed((e.message.topic, e.message.partition, e.message.offset) for e in batch)


async def _process_until_done(ctx: AgentContext, kind: Kind, batch: list[EventT[bytes]]) -> None:
    """Process ``batch`` so that every event ends stored or dead-lettered, and the partition moves on.

    Decoding dead-letters poison once. Outages are retried inside the store. What else fails (a value
    PostgreSQL refuses, a defect, an input no check foresaw) splits the batch: each event's store and
    follow-up is then tried alone, dead-lettered at once if the cause is permanent, else after
    ``UNKNOWN_ERROR_ATTEMPTS`` tries, so one record never holds its partition.
    """
    items = await _decode(ctx, kind, batch)
    if not items:
        return
    try:
        await _store_until_done(ctx, kind, items)
    finally:
        if tracing.enabled:
            tracing.end_all(items)


async def _store_until_done(ctx: AgentContext, kind: Kind, items: list[Incoming]) -> None:
    try:
        await _store_and_follow_up(ctx, kind, items)
        return
    except asyncio.CancelledError:
        raise
    except PERMANENT as exc:
        log.warning("a batch of %d %s events failed (%r); storing them one at a time", len(items), kind.topic, exc)
    except Exception:
        log.exception("a batch of %d %s events failed; storing them one at a time", len(items), kind.topic)
    for item in items:
        await _alone_until_done(ctx, kind, item)


async def _alone_until_done(ctx: AgentContext, kind: Kind, item: Incoming) -> None:
    first_failure = time.time()
    delays = retry.UNKNOWN_ERROR.delays()
    for attempt in range(1, UNKNOWN_ERROR_ATTEMPTS + 1):
        try:
            await _store_and_follow_up(ctx, kind, [item])
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, PERMANENT) or attempt == UNKNOWN_ERROR_ATTEMPTS:
                if tracing.enabled:
                    tracing.dead_lettered(item.span, item.origin.message, exc)
                await send_to_dead_letter(ctx, item.origin, exc, attempt, first_failure)
                return
            source = item.source
            log.exception(
                "%s[%d]@%d failed (attempt %d of %d)",
                source.topic,
                source.partition,
                source.offset,
                attempt,
                UNKNOWN_ERROR_ATTEMPTS,
            )
            await asyncio.sleep(next(delays))


async def _decode(ctx: AgentContext, kind: Kind, batch: list[EventT[bytes]]) -> list[Incoming]:
    """The batch's valid events; poison (not JSON, invalid, too large, wrongly keyed) is dead-lettered now.

    Decoding is pure, so an error of any kind here belongs to the record (a retry would fail the same way).
    """
    # every event of the batch is stored, even one whose partition was revoked meanwhile: the batch is acked
    # as a whole afterwards, and acking an event that was set aside let faust commit past it (events lost in
    # rebalances); its new owner may read it again, and the store keeps it once
    items: list[Incoming] = []
    for event in batch:
        message = event.message
        try:
            decoded = {**kind.defaults, **decode(message.value, kind.schema, ctx.settings.max_event_bytes)}
            if message.key != decoded["session_id"].encode():
                raise EventInvalid(kind.schema, [f"(key): record key {message.key!r} is not the session_id"])
        except Exception as exc:
            if tracing.enabled:
                tracing.dead_lettered(None, message, exc)
            await send_to_dead_letter(ctx, event, exc, 1, time.time())
            continue
        source = Source(message.topic, message.partition, message.offset)
        span = tracing.process_span(message) if tracing.enabled else None
        items.append(Incoming(decoded, source, event, span))
    return items


async def _store_and_follow_up(ctx: AgentContext, kind: Kind, items: list[Incoming]) -> None:
    """Store, note for the session tables, run the agent's after-store step (tools)."""
    began = time.perf_counter()
    result = await _store(ctx, items)
    ctx.metrics.stored(kind.topic, len(items), time.perf_counter() - began)
    _mirror_to_table(result, items)
    if kind.after_store is not None:
        await kind.after_store(ctx, result, items)


async def _store(ctx: AgentContext, items: list[Incoming]) -> BatchResult:
    """Store ``items`` (outages retried here) and feed what was stored; any other failure is the caller's."""
    pool = await ctx.resources.postgres()
    redis = ctx.resources.redis
    # one writer at a time per worker: the feed then carries each session's events in seq order even
    # when several agents (topics) write the same session
    async with ctx.resources.store_lock:
        began_ns = time.time_ns() if tracing.enabled else 0
        result = await retry_transient("store batch", lambda: store_batch(pool, items))
        # events stored before (a replay) go out again first, in their seq order: a viewer has them or not,
        # and keeps each seq once (the worker that stored them may have died before publishing them)
        fed = result.republished + result.stored
        encoded = [events.encode(event) for event in result.republished] + result.encoded
        if tracing.enabled:
            await _traced_feed_publish(ctx, items, result, began_ns, fed, encoded)
            return result
        await retry_transient(
            "publish to the session feed", lambda: feed.publish(redis, ctx.settings.redis_prefix, fed, encoded)
        )
    return result


async def _traced_feed_publish(
    ctx: AgentContext,
    items: list[Incoming],
    result: BatchResult,
    began_ns: int,
    fed: list[dict[str, Any]],
    encoded: list[bytes],
) -> None:
    """:func:`_store`'s feed publish when traces are on: the store is a span of each sampled event, and each
    of their feed messages carries the event's trace context to the workers that deliver it."""
    sampled = tracing.stored(items, result, began_ns)
    payloads = tracing.feed_payloads(fed, encoded, sampled) if sampled else encoded
    redis = ctx.resources.redis
    await retry_transient(
        "publish to the session feed", lambda: feed.publish(redis, ctx.settings.redis_prefix, fed, payloads)
    )


def _mirror_to_table(result: BatchResult, items: list[Incoming]) -> None:
    """Note each session's committed state for the session tables' next write-out (tables/sessions.py)."""
    last_event = {item.event["session_id"]: item.origin for item in items}
    for session_id, envelope in result.envelopes.items():
        event = last_event.get(session_id)
        if event is not None:
            mirror.note(session_id, envelope, event)


__all__ = ["Kind", "consume"]
