"""Stopping a reply: a client's stop (``POST /v1/session/{id}/stop`` or ``{"action": "stop"}`` on its WebSocket) is
a Redis key of the session holding the time it was asked; the responder writing that session's reply, on
whichever worker, reads it while the model writes and ends a reply begun before that time (agents/responder.py).
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

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
