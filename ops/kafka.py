"""The Kafka side of the operations commands: clients that fail in one line, topic names, pacing, progress."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import click
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from app import app
from app.topics import SESSION_TOPICS, dead_letter
from ops.base import CommandError

# the topics of the service, by the logical names an operator types (the prefix is added)
KNOWN = (*SESSION_TOPICS, *(dead_letter(t) for t in SESSION_TOPICS))


def real_topic(name: str) -> str:
    """The real name of a topic of the service given by its logical name (or already prefixed)."""
    settings = app.settings
    logical = name.removeprefix(settings.topic_prefix) if settings.topic_prefix else name
    if logical not in KNOWN:
        raise CommandError(f"unknown topic {name!r}; one of {', '.join(KNOWN)}")
    return settings.topic(logical)


@asynccontextmanager
async def _started(client: AIOKafkaConsumer | AIOKafkaProducer) -> AsyncIterator[None]:
    """``client`` started (a broker that cannot be reached is one line), then stopped."""
    try:
        await client.start()
    except KafkaError as exc:
        await client.stop()
        raise CommandError(f"cannot reach the broker at {app.settings.kafka_bootstrap}: {exc}") from None
    try:
        yield
    finally:
        await client.stop()


@asynccontextmanager
async def consumer() -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer with no group (it assigns partitions itself and commits nothing), metadata fresh."""
    settings = app.settings
    client = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
        **settings.kafka_security(),
    )
    async with _started(client):
        try:
            await client._client.force_metadata_update()
        except KafkaError as exc:
            raise CommandError(f"cannot reach the broker at {app.settings.kafka_bootstrap}: {exc}") from None
        yield client


@asynccontextmanager
async def producer() -> AsyncIterator[AIOKafkaProducer]:
    """An idempotent producer with acks=all, like the worker's: a record is sent once and kept by every ISR."""
    settings = app.settings
    client = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=30_000,
        **settings.kafka_security(),
    )
    async with _started(client):
        yield client


def partitions_of(client: AIOKafkaConsumer, topic: str) -> list[int]:
    found = client.partitions_for_topic(topic)
    if not found:
        raise CommandError(f"topic {topic!r} does not exist on {app.settings.kafka_bootstrap}")
    return sorted(found)


class Pace:
    """At most ``rate`` per second on average (0: as fast as the broker takes them)."""

    def __init__(self, rate: float) -> None:
        if rate < 0:
            raise CommandError("--rate must be >= 0 (0: no limit)")
        self.rate = rate
        self.began = time.monotonic()
        self.done = 0

    async def tick(self) -> None:
        self.done += 1
        if self.rate:
            ahead = self.began + self.done / self.rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

    def per_second(self) -> float:
        return self.done / max(time.monotonic() - self.began, 1e-6)


@contextmanager
def progress(total: int, label: str, pace: Pace) -> Iterator[Any]:
    """click's progress bar (position, percentage, rate, ETA) on a terminal's stderr; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    bar: Any
    with click.progressbar(
        length=total,
        label=label,
        file=sys.stderr,
        show_eta=True,
        show_pos=True,
        show_percent=True,
        item_show_func=lambda _: f"{pace.per_second():,.0f}/s",
    ) as bar:
        yield bar
