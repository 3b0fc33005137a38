"""One Redis subscription per worker, fanned out to the local viewers of each watched session.

A worker subscribes only to the channels of sessions someone watches on it, so its delivery cost grows
with the sessions watched here, not with the cluster's traffic. When the Redis connection drops, events
may have been missed: every listener is told to resynchronise (from Postgres, by seq) once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from app import events, redis_client, retry, tracing
from app.feed import channel
from app.settings import Settings

log = logging.getLogger(__name__)

# a subscription that has carried nothing this long is PINGed (its answer is due within the health timeout)
PING_AFTER_SECONDS = 5.0
# a new connection must be subscribed to every watched channel within this, or it is tried again
RESUBSCRIBE_WITHIN_SECONDS = 10.0


class FeedItem:
    """One event of the feed as every local viewer of its session shares it: decoded once, framed once."""

    __slots__ = ("event", "frames", "raw", "seq")

    def __init__(self, event: dict[str, Any], raw: bytes) -> None:
        self.event = event
        self.raw = raw  # the event's JSON, exactly as stored
        self.seq: int = event["seq"]
        self.frames: dict[str, bytes] = {}  # per transport, its framing of ``raw``, built by the first viewer

    @classmethod
    def of(cls, event: dict[str, Any]) -> FeedItem:
        """An item for an event read from Postgres (history, gap fills)."""
        return cls(event, events.encode(event))

    def frame(self, transport: str, build: Callable[[FeedItem], bytes]) -> bytes:
        framed = self.frames.get(transport)
        if framed is None:
            framed = self.frames[transport] = build(self)
        return framed


class FeedListener:
    """What a viewer gives the hub: called on the loop for each event, and after a reconnect."""

    def __init__(self, on_event: Callable[[FeedItem], None], on_resync: Callable[[], None]) -> None:
        self.on_event = on_event
        self.on_resync = on_resync


class FeedHub:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client = redis_client.connect(settings.redis_url, socket_connect_timeout=settings.health_timeout_seconds)
        self._pubsub: aioredis.client.PubSub | None = None
        self._listeners: dict[str, set[FeedListener]] = {}
        self._channels: dict[bytes, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._heard = 0.0  # loop time of the last message (a pong included) the subscription carried
        self._cut = False  # the watchdog cut the connection

    @property
    def watched(self) -> int:
        return len(self._listeners)

    async def subscribe(self, session_id: str, listener: FeedListener) -> None:
        """Deliver ``session_id``'s feed to ``listener``; returns once the subscription is in place."""
        async with self._lock:
            listeners = self._listeners.setdefault(session_id, set())
            listeners.add(listener)
            if len(listeners) == 1:
                name = channel(self.settings.redis_prefix, session_id)
                self._channels[name.encode()] = session_id
                try:
                    await self._ensure().subscribe(name)
                except BaseException:
                    # Redis refused or the caller gave up: nothing of this subscription stays registered
                    del self._listeners[session_id]
                    self._channels.pop(name.encode(), None)
                    raise
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run(), name="feed hub")
                self._task.add_done_callback(_report_crash)

    async def unsubscribe(self, session_id: str, listener: FeedListener) -> None:
        async with self._lock:
            listeners = self._listeners.get(session_id)
            if listeners is None:
                return
            listeners.discard(listener)
            if not listeners:
                del self._listeners[session_id]
                name = channel(self.settings.redis_prefix, session_id)
                self._channels.pop(name.encode(), None)
                if self._pubsub is not None:
                    try:
                        await self._pubsub.unsubscribe(name)
                    except (redis.exceptions.RedisError, OSError) as exc:
                        # the connection is broken: the watchdog replaces it, without this channel
                        log.info("feed of session %s: unsubscribing failed (%r)", session_id, exc)

    def _ensure(self) -> aioredis.client.PubSub:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        return self._pubsub

    async def _run(self) -> None:
        """Deliver the subscription's messages for as long as anyone listens; reconnects, never ends on an error."""
        delays = retry.FEED_RECONNECT.delays()
        lost = False
        while self._listeners:
            try:
                if lost:
                    # raises while Redis is still away (or does not answer in time): backs off and tries again
                    async with asyncio.timeout(RESUBSCRIBE_WITHIN_SECONDS):
                        await self._resubscribe()
                    lost, delays = False, retry.FEED_RECONNECT.delays()
                    self._resync_all()
                pubsub = self._ensure()
                if await self._listen(pubsub):
                    raise ConnectionError("no answer to a PING on the subscription's connection")
                # listen() returns once the connection holds no subscription
                if not self._listeners:
                    return
                if self._channels and not pubsub.subscribed:
                    lost = True  # channels are wanted but not subscribed: subscribe them again
                else:
                    await asyncio.sleep(0.01)  # a listener is being added: let its subscribe finish
            except Exception as exc:
                delay = next(delays)
                if isinstance(exc, redis.exceptions.RedisError | OSError | RuntimeError):
                    log.warning("session feed connection lost (%r); resubscribing in %.1fs", exc, delay)
                else:  # a defect: the hub goes on (its viewers would get nothing live), but loudly
                    log.exception("the session feed hub failed; resubscribing in %.1fs", delay)
                lost = True
                await asyncio.sleep(delay)

    async def _listen(self, pubsub: aioredis.client.PubSub) -> bool:
        """Dispatch messages until listen() ends; True if the watchdog cut a connection that went silent."""
        self._heard = asyncio.get_running_loop().time()
        self._cut = False
        watchdog = asyncio.create_task(self._watch(pubsub), name="feed hub watchdog")
        try:
            # listen() blocks on the socket; get_message(timeout=...) can sit out its whole timeout with
            # messages already buffered, which showed as ~1 s delivery stalls
            async for message in pubsub.listen():
                self._heard = asyncio.get_running_loop().time()
                if message["type"] == "message":
                    self._dispatch(message["channel"], message["data"])
        except (redis.exceptions.RedisError, OSError):
            if not self._cut:
                raise
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        return self._cut

    async def _watch(self, pubsub: aioredis.client.PubSub) -> None:
        """PING a subscription silent for ``PING_AFTER_SECONDS``; cut it if no answer comes within the health
        timeout, so that a Redis that stopped answering (a half-open connection, a hung server) is noticed
        and the hub reconnects and resynchronises instead of waiting on the socket forever."""
        loop = asyncio.get_running_loop()
        answer_within = self.settings.health_timeout_seconds
        while True:
            silent = loop.time() - self._heard
            if silent < PING_AFTER_SECONDS:
                await asyncio.sleep(PING_AFTER_SECONDS - silent)
                continue
            asked = loop.time()
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                async with asyncio.timeout(answer_within):
                    await pubsub.ping()
            await asyncio.sleep(max(0.0, answer_within - (loop.time() - asked)))
            if self._heard < asked:
                log.warning(
                    "session feed connection silent for %.0f s, no answer to a PING within %.1f s: reconnecting",
                    loop.time() - self._heard,
                    answer_within,
                )
                self._cut = True
                connection: Any = pubsub.connection  # redis-py types it as always None
                if connection is not None:
                    await connection.disconnect(nowait=True)
                return

    async def _resubscribe(self) -> None:
        """A new connection subscribed to every watched channel; raises if Redis does not answer."""
        async with self._lock:
            old, self._pubsub = self._pubsub, None
            if old is not None:
                try:
                    await old.aclose()  # type: ignore[no-untyped-call]
                except Exception as exc:  # the connection being replaced is broken already
                    log.debug("feed hub: closing the replaced connection failed (%r)", exc)
            if self._channels:
                await self._ensure().subscribe(*(name.decode() for name in self._channels))

    def _resync_all(self) -> None:
        """Events published while the subscription was away are read from Postgres by every listener."""
        for listeners in list(self._listeners.values()):
            for listener in list(listeners):
                listener.on_resync()

    def _dispatch(self, name: bytes, data: bytes) -> None:
        session_id = self._channels.get(name)
        if session_id is None:
            return
        listeners = self._listeners.get(session_id)
        if not listeners:
            return
        carrier = None
        if data[:1] == tracing.FEED_MARK:  # published with its trace context (a worker with traces on)
            carrier, data = tracing.split_feed_message(data)
        item = FeedItem(events.decode(data), data)
        if carrier is not None and tracing.enabled:
            span = tracing.delivery_span(carrier, session_id, item.seq, len(listeners))
            try:
                for listener in list(listeners):
                    listener.on_event(item)
            finally:
                span.end()
            return
        for listener in list(listeners):
            listener.on_event(item)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            except Exception as exc:  # shutting down: nothing more to do with it
                log.debug("feed hub: closing its connection at shutdown failed (%r)", exc)
        await self._client.aclose()


def _report_crash(task: asyncio.Task[None]) -> None:
    # the next subscribe starts the hub again; until then its viewers get nothing live, so say so loudly
    if not task.cancelled() and task.exception() is not None:
        log.error("the session feed hub stopped", exc_info=task.exception())
