"""Keeping a table's partitions in Redis current: flushes retried through outages, hand-offs, reads on assignment."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import retry
from tables.partition_state import PartitionState
from tables.redis_config import StoreConfig
from tables.redis_io import Loaded, RedisPartitions

log = logging.getLogger(__name__)


class WriteBehind:
    """The store's side of Redis for one table; never called from faust's synchronous store API."""

    def __init__(self, redis: RedisPartitions, config: StoreConfig, table: str) -> None:
        self.redis = redis
        self.config = config
        self.table = table
        self._failing_since: float | None = None

    async def flush(self, parts: Iterable[PartitionState]) -> bool:
        """Write each partition's confirmed changes; False when Redis failed (the changes are kept)."""
        now = time.time()
        for part in list(parts):
            if self.config.ttl is not None:
                part.expire(now)
            if not part.has_work():
                continue
            try:
                # one writer per partition at a time: two flushes racing would land out of offset order
                async with part.lock:
                    if part.has_work():
                        await self.redis.flush(part)
            except RedisError as exc:
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning(
                        "table %s: writing to Redis failed (%s: %s): changes kept, retrying",
                        self.table,
                        type(exc).__name__,
                        exc,
                        # a refused or dropped connection says all in its one line; anything else, its stack
                        exc_info=not isinstance(exc, (RedisConnectionError, RedisTimeoutError)),
                    )
                return False
        if self._failing_since is not None:
            log.info(
                "table %s: writing to Redis resumed after %.1f s", self.table, time.monotonic() - self._failing_since
            )
            self._failing_since = None
        return True

    async def hand_off(self, parts: list[PartitionState]) -> None:
        """Flush ``parts`` before they are given away (bounded: the group waits for this worker)."""
        deadline = time.monotonic() + self.config.handoff_timeout
        pending = [part for part in parts if part.has_work()]
        while pending and time.monotonic() < deadline:
            await self.flush(pending)
            pending = [part for part in pending if part.has_work()]
            if pending:
                await asyncio.sleep(0.2)
        for part in pending:
            log.warning(
                "table %s partition %d: handed over with changes up to offset %s not in Redis; "
                "its next owner replays them from the changelog",
                self.table,
                part.partition,
                part.offset,
            )

    async def load(self, partition: int) -> PartitionState:
        """The partition as Redis holds it; with no usable copy, an empty one that faust replays in full."""
        started = time.monotonic()
        loaded = await self._read(partition, started)
        part = PartitionState(partition)
        if loaded is not None and loaded.snapshot:
            part.data = loaded.data
            part.offset = part.redis_offset = loaded.offset
            part.deadlines = OrderedDict(loaded.deadlines)
        else:
            # the changelog is replayed in full, then the copy written anew (whatever Redis holds is replaced)
            part.rewrite = True
        log.info(
            "table %s partition %d: %d keys at changelog offset %s from Redis in %.2f s",
            self.table,
            partition,
            len(part.data),
            part.offset,
            time.monotonic() - started,
        )
        return part

    async def _read(self, partition: int, started: float) -> Loaded | None:
        delays = retry.TABLE_LOAD.delays()
        while True:
            try:
                return await self.redis.load(partition)
            except RedisError as exc:
                delay = next(delays)
                if time.monotonic() - started + delay > self.config.load_timeout:
                    # a long replay beats a worker that cannot start: the changelog has every change
                    log.warning(
                        "table %s partition %d: Redis unreachable for %.0f s (%r): recovering from the changelog",
                        self.table,
                        partition,
                        self.config.load_timeout,
                        exc,
                    )
                    return None
                log.warning("table %s partition %d: reading Redis failed (%r), retrying", self.table, partition, exc)
                await asyncio.sleep(delay)
