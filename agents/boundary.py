"""The per-event failure policy, decided at the event boundary (faust acks an event whose agent raised).

- poison: a record that does not decode or validate, or a permanent processing error, goes to the
  topic's dead-letter topic at once; the send is awaited before the event is acked;
- transient: Postgres, Redis or Kafka unavailable, or a timeout, is retried with capped exponential
  backoff, holding the stream (and so the partition) rather than skipping; never dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import psycopg2
import redis.exceptions
from aiokafka.errors import KafkaError

from app import events, retry, schemas
from app.errors import EventInvalid, SomaError
from app.repository import ConcurrentInsert
from app.topics import dead_letter

if TYPE_CHECKING:
    from faust.types import EventT

    from agents.context import AgentContext

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    psycopg2.errors.SerializationFailure,
    psycopg2.errors.DeadlockDetected,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    KafkaError,
    TimeoutError,
    ConnectionError,
    ConcurrentInsert,
)


# a dead letter's own headers (the failure); a redrive strips them before republishing the record
FAILURE_HEADERS = ("__connect.errors.", "soma.dlq.")
# set by `faust -A app dlq redrive` (ops/dlq.py): the attempts of the record's earlier failures and the time of
# the first, so that a redriven record that fails again is dead-lettered with the attempts added up
REDRIVE_ATTEMPTS = "soma.redrive.attempts"
REDRIVE_FIRST_FAILURE = "soma.redrive.first_failure"


class EventTooLarge(SomaError):
    """A record larger than ``SOMA_MAX_EVENT_BYTES``: dead-lettered without parsing it."""


PERMANENT: tuple[type[BaseException], ...] = (
    EventTooLarge,
    UnicodeDecodeError,
    json.JSONDecodeError,
    EventInvalid,
    psycopg2.DataError,
    psycopg2.IntegrityError,
)


def decode(raw: bytes | None, schema: str, max_bytes: int) -> dict[str, Any]:
    """Parse and validate one record's value; raises a PERMANENT error for poison."""
    if raw is None:
        raise EventInvalid(schema, ["(root): record has no value"])
    if len(raw) > max_bytes:
        raise EventTooLarge(f"record of {len(raw)} bytes exceeds SOMA_MAX_EVENT_BYTES={max_bytes}")
    event = events.decode(raw.decode("utf-8"))
    if not isinstance(event, dict):
        raise EventInvalid(schema, ["(root): not a JSON object"])
    schemas.validate(schema, event)
    return event


_retrying = 0  # calls of retry_transient waiting out a transient failure now (the metric of app/metrics.py)


def retrying() -> int:
    return _retrying


async def retry_transient(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` until it succeeds, waiting ``retry.INFRASTRUCTURE``'s backoff after transient errors."""
    global _retrying
    delays = retry.INFRASTRUCTURE.delays()
    failures = 0
    try:
        while True:
            try:
                return await attempt()
            except TRANSIENT as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # the caller was cancelled mid-attempt and the library turned it into another error (aiopg
                    # closes a connection whose query is cancelled, and releasing it then raises InterfaceError):
                    # the cancellation wins, or a stream told to end would go on reading
                    raise asyncio.CancelledError(f"{what}: cancelled") from exc
                failures += 1
                if failures == 1:
                    _retrying += 1
                delay = next(delays)
                # the first failure and then every tenth are logged: an outage must not flood the log
                if failures == 1 or failures % 10 == 0:
                    log.warning("%s: transient failure #%d, retrying in %.1fs: %r", what, failures, delay, exc)
                await asyncio.sleep(delay)
    finally:
        if failures:
            _retrying -= 1


def _redriven(headers: list[tuple[str, bytes]]) -> tuple[int, float] | None:
    """The earlier attempts and first failure of a redriven record, from its headers (None: not redriven)."""
    found = dict(headers)
    try:
        attempts, first = int(found[REDRIVE_ATTEMPTS]), float(found[REDRIVE_FIRST_FAILURE])
    except (KeyError, ValueError):
        return None
    if attempts < 0 or not math.isfinite(first):
        return None
    return attempts, first


async def send_to_dead_letter(
    ctx: AgentContext, event: EventT[bytes], cause: BaseException, attempts: int, first_failure: float
) -> None:
    """Publish the original record with Kafka Connect style error headers; retried until the broker acks."""
    message = event.message
    now = time.time()
    headers = message.headers
    # aiokafka hands the headers over as (str, bytes) pairs
    every = cast(list[tuple[str, bytes]], list(headers.items()) if isinstance(headers, dict) else list(headers or []))
    # a record that arrives with failure headers (copied from a dead-letter topic by hand) gets fresh ones
    original = [(name, value) for name, value in every if not name.startswith(FAILURE_HEADERS)]
    earlier = _redriven(original)
    if earlier is not None:
        attempts += earlier[0]
        first_failure = min(first_failure, earlier[1])
    error_class = f"{type(cause).__module__}.{type(cause).__qualname__}"
    error_headers = [
        ("__connect.errors.topic", message.topic.encode()),
        ("__connect.errors.partition", str(message.partition).encode()),
        ("__connect.errors.offset", str(message.offset).encode()),
        ("__connect.errors.exception.class.name", error_class.encode()),
        ("__connect.errors.exception.message", str(cause)[:4000].encode()),
        ("__connect.errors.exception.stacktrace", "".join(traceback.format_exception(cause))[-8000:].encode()),
        ("soma.dlq.attempts", str(attempts).encode()),
        ("soma.dlq.first_failure", f"{first_failure:.6f}".encode()),
        ("soma.dlq.last_failure", f"{now:.6f}".encode()),
        ("soma.dlq.original_timestamp", f"{message.timestamp:.6f}".encode()),
    ]
    logical = message.topic.removeprefix(ctx.settings.topic_prefix)
    target = ctx.topics[dead_letter(logical)]
    log.error(
        "dead-lettering %s[%d]@%d: %s: %s",
        message.topic,
        message.partition,
        message.offset,
        type(cause).__name__,
        cause,
    )

    async def send() -> None:
        pending = await target.send(
            key=message.key,
            value=message.value,
            partition=message.partition,
            headers=[*original, *error_headers],
            force=True,
        )
        await pending

    await retry_transient(f"dead-letter {message.topic}[{message.partition}]@{message.offset}", send)
    ctx.metrics.dead_lettered(logical, logical, error_class)
