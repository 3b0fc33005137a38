"""The session feed: one Redis channel per session carrying each stored event's JSON, in seq order."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from app import events
from app.settings import Settings


def channel(settings: Settings, session_id: str) -> str:
    return f"{settings.redis_prefix}session:{session_id}:feed"


async def publish(client: aioredis.Redis, settings: Settings, stored: list[dict[str, Any]]) -> None:
    """PUBLISH every event to its session's channel, in the given (seq) order, in one round trip."""
    if not stored:
        return
    async with client.pipeline(transaction=False) as pipe:
        for event in stored:
            pipe.publish(channel(settings, event["session_id"]), events.encode(event))
        await pipe.execute()
