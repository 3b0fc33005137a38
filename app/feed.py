"""The session feed: one Redis channel per session carrying each stored event's JSON, in seq order."""

from __future__ import annotations

import weakref
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from app import events


def channel(redis_prefix: str, session_id: str) -> str:
    return f"{redis_prefix}session:{session_id}:feed"


async def publish(
    client: aioredis.Redis, redis_prefix: str, stored: list[dict[str, Any]], encoded: list[bytes] | None = None
) -> None:
    """PUBLISH every event to its session's channel, in the given (seq) order, in one round trip.

    ``encoded``: the events' JSON when the caller has it already (the store encodes each event once).
    """
    if not stored:
        return
    payloads = encoded if encoded is not None else [events.encode(event) for event in stored]
    args: list[bytes | str] = []
    for event, payload in zip(stored, payloads, strict=True):
        args += (channel(redis_prefix, event["session_id"]), payload)
    # one command for the whole batch: a pipeline of one PUBLISH per event cost ~7 % of a busy worker
    await _publish_all(client)(args=args)


def _publish_all(client: aioredis.Redis) -> AsyncScript:
    """The client's script object (made once): it runs EVALSHA, and loads the script again after NOSCRIPT."""
    script = _SCRIPTS.get(client)
    if script is None:
        script = _SCRIPTS[client] = client.register_script(PUBLISH_ALL)
    return script


# PUBLISH each (channel, message) pair of ARGV, in order
PUBLISH_ALL = """
for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return #ARGV / 2
"""
_SCRIPTS: weakref.WeakKeyDictionary[aioredis.Redis, AsyncScript] = weakref.WeakKeyDictionary()
