"""Faust table store ``redis://``: partitions served from local memory, written behind to Redis in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import redis.asyncio as aioredis
from faust.exceptions import ImproperlyConfigured
from faust.stores.base import SerializedStore
from faust.streams import current_event
from faust.types import TP, AppT, CollectionT, EventT
from faust.types.tuples import FutureMessage, RecordMetadata
from yarl import URL

from app import redis_client, retry
from tables.partition_state import PartitionState
from tables.redis_config import StoreConfig
from tables.redis_io import RedisPartitions, wipe_blocking
from tables.redis_keys import TableKeys
from tables.write_behind import WriteBehind

log = logging.getLogger(__name__)


class RedisStore(SerializedStore[Any, Any]):
    """A table store whose partitions live in this worker's memory and, written behind, in Redis.

    faust's store API is synchronous, so ``get``/``set``/``delete`` never touch the network: they read and
    change a dict per partition this worker holds (active or standby). A background task writes every
    active partition's confirmed changes, with the changelog offset they are complete up to, in one script
    call per partition (see ``tables/redis_io.py``). A partition assigned to this worker is read from Redis
    first, so faust replays only the changelog records after that offset.
    """

    def __init__(self, url: str | URL, app: AppT, table: CollectionT, **kwargs: Any) -> None:
        super().__init__(url, app, table, **kwargs)
        if table.is_global or table.use_partitioner:
            raise ImproperlyConfigured("the redis:// store serves partitioned tables only (not global tables)")
        if app.in_transaction:
            # records would reach Redis before their transaction commits
            raise ImproperlyConfigured("the redis:// store does not support processing_guarantee='exactly_once'")
        self.config = StoreConfig.resolve(self.url, app, self.options)
        self.layout = TableKeys(self.config.prefix, app.conf.id, self.table_name)
        self.client: aioredis.Redis = redis_client.connect(
            self.config.redis_url, socket_timeout=10.0, socket_connect_timeout=3.0
        )
        self.redis = RedisPartitions(
            self.client, self.layout, ttl=self.config.ttl, chunk=self.config.chunk, writer=uuid.uuid4().hex[:12]
        )
        self.write_behind = WriteBehind(self.redis, self.config, self.table_name)
        self._parts: dict[int, PartitionState] = {}
        self._rebalance_lock = asyncio.Lock()
        self._late_writes: set[int] = set()
        self._confirmed = asyncio.Event()
        self._flusher: asyncio.Future[None] | None = None
        self._tap_changelog()
        # flushed before the group reassigns anything, so a partition's next owner starts from fresh state
        # (mode types a handler with mypy_extensions arguments that no coroutine method matches)
        app.on_partitions_revoked.connect(self._on_partitions_revoked)  # type: ignore[arg-type]

    def _tap_changelog(self) -> None:
        """Hear of each changelog record of this table that the broker stored, with its key and value.

        faust hands a store only ``set_persisted_offset(tp, offset)``; writing the record's own key and value
        is what makes Redis an exact prefix of the changelog, whatever order faust calls the store in.
        """
        table: Any = self.table
        faust_callback: Callable[[FutureMessage], None] = type(table)._on_changelog_sent.__get__(table)

        def on_changelog_sent(fut: FutureMessage) -> None:
            faust_callback(fut)
            self._confirm(fut)

        table._on_changelog_sent = on_changelog_sent

    def _confirm(self, fut: FutureMessage) -> None:
        result: RecordMetadata = fut.result()
        part = self._parts.get(result.topic_partition.partition)
        if part is None or not part.active:
            return  # given away meanwhile: its next owner reads the record from the changelog
        message = fut.message
        part.confirm(result.offset, cast(bytes, message.key), cast(bytes | None, message.value))
        self._confirmed.set()

    # -- faust's synchronous store API: local memory only ------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        event = current_event()
        if event is not None:
            part = self._parts.get(event.message.partition)
            return None if part is None else part.data.get(key)
        for part in self._actives():
            value = part.data.get(key)
            if value is not None:
                return value
        return None

    def _set(self, key: bytes, value: bytes | None) -> None:
        part = self._writable()
        if part is not None:
            part.set(key, value, time.time() + self.config.ttl if self.config.ttl and value is not None else None)

    def _del(self, key: bytes) -> None:
        part = self._writable()
        if part is not None:
            part.set(key, None)

    def _writable(self) -> PartitionState | None:
        event = current_event()
        if event is None:
            raise RuntimeError(f"table {self.table_name} (redis://) can only be changed while processing an event")
        partition = event.message.partition
        part = self._parts.get(partition)
        if part is not None and part.active:
            return part
        # an event whose partition was revoked while it was processed: its changelog record is on its way to
        # the new owner, which holds the partition now
        if partition not in self._late_writes:
            self._late_writes.add(partition)
            log.warning(
                "table %s: write to partition %d, no longer assigned here, left to its owner",
                self.table_name,
                partition,
            )
        return None

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _actives(self) -> Iterator[PartitionState]:
        return (part for part in self._parts.values() if part.active)

    def _iterkeys(self) -> Iterator[bytes]:
        for part in list(self._actives()):
            yield from list(part.data)

    def _itervalues(self) -> Iterator[bytes | None]:
        for part in list(self._actives()):
            yield from list(part.data.values())

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        for part in list(self._actives()):
            yield from list(part.data.items())

    def _size(self) -> int:
        return sum(len(part.data) for part in self._actives())

    def _clear(self) -> None:
        for part in self._actives():
            for key in list(part.data):
                part.set(key, None)

    def apply_changelog_batch(
        self, batch: Iterable[EventT[Any]], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        """Apply changelog records read back (recovery, standby); a TTL table drops records already expired."""
        ttl = self.config.ttl
        now = time.time()
        for event in batch:
            message = event.message
            if message.key is None:
                raise TypeError(f"Changelog entry is missing key: {message}")
            part = self._parts.get(message.partition)
            if part is None:
                continue
            value, deadline = message.value, None
            if ttl is not None and value is not None:
                deadline = message.timestamp + ttl
                if deadline <= now:
                    value, deadline = None, None
            part.apply(message.offset, message.key, value, deadline)

    def persisted_offset(self, tp: TP) -> int | None:
        """The changelog offset this partition's values are complete up to; faust replays what follows."""
        part = self._parts.get(tp.partition)
        return None if part is None else part.offset

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        # deliberately nothing: the offset moves with the record itself, in _confirm, so an offset is never
        # persisted without the change it stands for
        return None

    # -- assignment ---------------------------------------------------------------------------------------

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        topic = self.table.changelog_topic.get_topic_name()
        held = {tp.partition for tp in assigned if tp.topic == topic}
        actives = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
        await self.assign(held & actives, held - actives)

    async def assign(self, actives: set[int], standbys: set[int]) -> None:
        """Hold exactly these partitions: flush and drop the others, read new ones from Redis."""
        async with self._rebalance_lock:
            self._late_writes.clear()
            keep = actives | standbys
            # a fenced partition's memory may disagree with its owner's: read it again if still ours
            leaving = [
                part
                for p, part in self._parts.items()
                if p not in keep or part.fenced or (part.active and p not in actives)
            ]
            await self.write_behind.hand_off([part for part in leaving if not part.fenced])
            for part in leaving:
                if part.partition not in keep or part.fenced:
                    del self._parts[part.partition]
                else:
                    # a standby's changes arrive as changelog records: confirmations still in flight are moot
                    part.active = False
                    part.inflight.clear()
            missing = sorted(keep - self._parts.keys())
            for part in await asyncio.gather(*(self.write_behind.load(p) for p in missing)):
                self._parts[part.partition] = part
            for p in keep:
                self._parts[p].active = p in actives

    async def _on_partitions_revoked(self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await self.write_behind.hand_off(list(self._actives()))

    # -- writing behind -----------------------------------------------------------------------------------

    async def on_start(self) -> None:
        # a future of our own (not a Service.task): on_stop waits for it before the last flush and the close
        self._flusher = self.add_future(self._write_behind())

    async def _write_behind(self) -> None:
        delay = self.config.flush_interval
        failed = retry.TABLE_FLUSH.delays()
        while True:
            await self.sleep(delay)
            if self.should_stop:
                return
            if await self.flush():
                delay, failed = self.config.flush_interval, retry.TABLE_FLUSH.delays()
            else:
                delay = max(next(failed), self.config.flush_interval)

    async def flush(self) -> bool:
        """Write every active partition's confirmed changes now; False when Redis failed (they are kept)."""
        return await self.write_behind.flush(self._actives())

    async def on_stop(self) -> None:
        if self._flusher is not None:
            await self._flusher
        actives = list(self._actives())
        # tables stop before the producer: let the records still in flight be confirmed, then write them
        deadline = time.monotonic() + 2.0
        while any(part.inflight for part in actives) and time.monotonic() < deadline:
            self._confirmed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._confirmed.wait(), deadline - time.monotonic())
        await self.write_behind.hand_off(actives)
        await self.client.aclose()

    # -- faust's maintenance API --------------------------------------------------------------------------

    def reset_state(self) -> None:
        """``faust reset``: delete the table's keys in Redis and forget the local copy (the changelog stays)."""
        self._parts.clear()
        removed = wipe_blocking(self.config.redis_url, self.layout, socket_timeout=10.0, socket_connect_timeout=3.0)
        log.info("table %s: removed %d Redis keys", self.table_name, removed)

    async def read_behind(self, partition: int, key: bytes) -> bytes | None:
        """A key of any partition, from Redis (not this worker's memory): what any replica can read."""
        return await self.redis.read(partition, key)

    async def wipe(self) -> int:
        """:meth:`reset_state` without blocking the event loop."""
        self._parts.clear()
        return await self.redis.wipe()

    async def backup_partition(self, tp: TP | int, flush: bool = True, purge: bool = False, keep: int = 1) -> None:
        """Redis is this store's backup: write the partition's pending changes there now."""
        partition = tp.partition if isinstance(tp, TP) else tp
        await self.write_behind.hand_off([part for part in self._actives() if part.partition == partition])

    def restore_backup(self, tp: TP | int, latest: bool = True, backup_id: int = 0) -> None:
        raise NotImplementedError("the redis:// store reads a partition from Redis whenever it is assigned")
