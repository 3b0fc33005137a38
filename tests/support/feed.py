"""Listening to session feeds in Redis the way a streaming view will: a pattern subscription."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from app import redis_client


class FeedListener:
    """Collects every event published on ``<prefix>session:*:feed`` from the moment it is started."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.client = redis_client.connect(redis_url)
        self.pattern = f"{prefix}session:*:feed"
        self.events: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> FeedListener:
        self.pubsub = self.client.pubsub()
        await self.pubsub.psubscribe(self.pattern)
        # the subscription is confirmed before any event of the test is produced
        confirm = await self.pubsub.get_message(timeout=5)
        assert confirm is not None and confirm["type"] == "psubscribe", confirm
        self._task = asyncio.create_task(self._listen())
        return self

    async def _listen(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] == "pmessage":
                self.events.append(json.loads(message["data"]))

    def by_session(self) -> dict[str, list[dict[str, Any]]]:
        sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in self.events:
            sessions[event["session_id"]].append(event)
        return sessions

    async def wait_count(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(self.events) >= count, f"{len(self.events)} feed events within {timeout} s, expected {count}"

    async def wait_for(self, seen: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not seen(self.events) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert seen(self.events), f"not seen within {timeout} s among {len(self.events)} feed events"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.pubsub.aclose()
        await self.client.aclose()
