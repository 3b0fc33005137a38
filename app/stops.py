"""Stopping a reply: a client's stop (``POST /v1/session/{id}/stop`` or ``{"action": "stop"}`` on its WebSocket) is
a Redis key of the session holding the time it was asked; the responder writing that session's reply, on
whichever worker, reads it while the model writes and ends a reply begun before that time (agents/responder.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# a stop is kept this long: a reply that began before it and is still running notices it long before
STOP_TTL_SECONDS = 600


def key(redis_prefix: str, session_id: str) -> str:
    return f"{redis_prefix}reply-stop:{session_id}"


async def request_stop(redis: aioredis.Redis, redis_prefix: str, session_id: str) -> float:
    """Ask the session's running reply to stop; the time asked (a reply begun later goes on)."""
    now = time.time()
    await redis.set(key(redis_prefix, session_id), f"{now:.6f}", ex=STOP_TTL_SECONDS)
    return now


async def stopped_since(redis: aioredis.Redis, redis_prefix: str, session_id: str, began: float) -> bool:
    """Whether a stop was asked for the session after ``began`` (a reply's start)."""
    value = await redis.get(key(redis_prefix, session_id))
    return value is not None and float(value) >= began


async def wait_for_stop(redis: aioredis.Redis, redis_prefix: str, session_id: str, began: float, every: float) -> None:
    """Return once a stop was asked for the session after ``began``, looking every ``every`` seconds (Redis
    away: the reply goes on, and it is looked for again).

    redis-py 8.1 swallows a cancellation that arrives mid-command about one time in five (the command returns
    and the task goes on: tests/test_responder.py shows it): the loop checks for one itself, or a reply that
    cancels its watcher when it ends would wait for it forever.
    """
    task = asyncio.current_task()
    while True:
        try:
            if await stopped_since(redis, redis_prefix, session_id, began):
                return
        except (RedisError, OSError) as exc:
            log.info("could not read the stop of session %s (%r)", session_id, exc)
        if task is not None and task.cancelling():
            raise asyncio.CancelledError("the stop watcher was cancelled during a Redis command")
        await asyncio.sleep(every)
