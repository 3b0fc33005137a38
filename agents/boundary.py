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
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psycopg2
import redis.exceptions
from aiokafka.errors import KafkaError

from app import schemas
from app.errors import EventInvalid
from app.repository import Source
from app.topics import dead_letter

if TYPE_CHECKING:
    from faust.types import EventT

    from app.faust_app import SomaApp

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Source], Awaitable[None]]

TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    KafkaError,
    TimeoutError,
    ConnectionError,
)
PERMANENT: tuple[type[BaseException], ...] = (
    UnicodeDecodeError,
    json.JSONDecodeError,
    EventInvalid,
    psycopg2.DataError,
    psycopg2.IntegrityError,
)
# an error of no known kind is retried this many times, then treated as permanent
UNKNOWN_ERROR_ATTEMPTS = 5
BACKOFF_START = 0.1
BACKOFF_CAP = 5.0


def decode(raw: bytes | None, schema: str) -> dict[str, Any]:
    if raw is None:
        raise EventInvalid(schema, ["(root): record has no value"])
    event = json.loads(raw.decode("utf-8"))
    if not isinstance(event, dict):
        raise EventInvalid(schema, ["(root): not a JSON object"])
    schemas.validate(schema, event)
    return event


async def process(app: SomaApp, event: EventT[bytes], schema: str, handler: Handler) -> None:
    """Decode, validate and handle one record; never raises except on cancellation."""
    message = event.message
    source = Source(message.topic, message.partition, message.offset)
    first_failure: float | None = None
    attempt = 0
    delay = BACKOFF_START
    while True:
        attempt += 1
        try:
            await handler(decode(message.value, schema), source)
            return
        except asyncio.CancelledError:
            raise
        except PERMANENT as exc:
            cause: BaseException = exc
        except TRANSIENT as exc:
            first_failure = first_failure or time.time()
            log.warning(
                "transient failure on %s[%d]@%d (attempt %d), retrying in %.1fs: %r",
                source.topic,
                source.partition,
                source.offset,
                attempt,
                delay,
                exc,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP)
            continue
        except Exception as exc:
            first_failure = first_failure or time.time()
            if attempt < UNKNOWN_ERROR_ATTEMPTS:
                log.exception(
                    "unexpected failure on %s[%d]@%d (attempt %d)",
                    source.topic,
                    source.partition,
                    source.offset,
                    attempt,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP)
                continue
            cause = exc
        await send_to_dead_letter(app, event, cause, attempt, first_failure or time.time())
        return


async def send_to_dead_letter(
    app: SomaApp, event: EventT[bytes], cause: BaseException, attempts: int, first_failure: float
) -> None:
    """Publish the original record with Kafka Connect style error headers; retried until the broker acks."""
    message = event.message
    now = time.time()
    error_headers = [
        ("__connect.errors.topic", message.topic.encode()),
        ("__connect.errors.partition", str(message.partition).encode()),
        ("__connect.errors.offset", str(message.offset).encode()),
        (
            "__connect.errors.exception.class.name",
            f"{type(cause).__module__}.{type(cause).__qualname__}".encode(),
        ),
        ("__connect.errors.exception.message", str(cause)[:4000].encode()),
        (
            "__connect.errors.exception.stacktrace",
            "".join(traceback.format_exception(cause))[-8000:].encode(),
        ),
        ("soma.dlq.attempts", str(attempts).encode()),
        ("soma.dlq.first_failure", f"{first_failure:.6f}".encode()),
        ("soma.dlq.last_failure", f"{now:.6f}".encode()),
        ("soma.dlq.original_timestamp", f"{message.timestamp:.6f}".encode()),
    ]
    original_headers = (
        list(message.headers.items()) if isinstance(message.headers, dict) else list(message.headers or [])
    )
    logical = message.topic.removeprefix(app.settings.topic_prefix)
    target = app.session_topics[dead_letter(logical)]
    log.error(
        "dead-lettering %s[%d]@%d: %s: %s",
        message.topic,
        message.partition,
        message.offset,
        type(cause).__name__,
        cause,
    )
    delay = BACKOFF_START
    while True:
        try:
            pending = await target.send(
                key=message.key,
                value=message.value,
                partition=message.partition,
                headers=[*original_headers, *error_headers],
                force=True,
            )
            await pending
            return
        except KafkaError as exc:
            log.warning("dead-letter send failed, retrying in %.1fs: %r", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP)
