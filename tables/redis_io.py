"""A table's partitions in Redis: write one behind (delta or full rewrite), read one back, wipe them all."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from app import redis_client
from tables.partition_state import Change, PartitionState
from tables.redis_keys import PartitionKeys, TableKeys
from tables.redis_scripts import DELTA, REWRITE

log = logging.getLogger(__name__)

# a consistent read of a partition is retried this often when a writer changes it meanwhile
LOAD_ATTEMPTS = 5
SCAN_COUNT = 10_000


class Outcome(enum.Enum):
    OK = "ok"
    # Redis holds a newer offset: another worker owns the partition now
    STALE = "stale"


@dataclass(frozen=True)
class Loaded:
    """A partition as Redis holds it: values, the offset they are complete up to, TTL deadlines."""

    data: dict[bytes, bytes]
    offset: int | None
    deadlines: list[tuple[bytes, float]] = field(default_factory=list)

    @property
    def snapshot(self) -> bool:
        return self.offset is not None


class RedisPartitions:
    """Reads and writes the partitions of one table; every write is fenced by the changelog offset."""

    def __init__(self, client: aioredis.Redis, keys: TableKeys, *, ttl: float | None, chunk: int, writer: str) -> None:
        self.client = client
        self.keys = keys
        self.ttl_ms = int(ttl * 1000) if ttl else 0
        self.chunk = chunk
        # names this writer's rewrite keys, so two writers racing on a partition never mix their rewrites
        self.writer = writer
        self._delta = client.register_script(DELTA)
        self._rewrite = client.register_script(REWRITE)

    # -- writing -------------------------------------------------------------------------------------------

    async def flush(self, part: PartitionState) -> Outcome:
        """Write what ``part`` has confirmed since the last flush; a whole rewrite when Redis lost it."""
        keys = self.keys.partition(part.partition)
        if not part.rewrite:
            delta, offset = part.take_delta()
            try:
                status, stored = await self._write_delta(keys, delta, offset, part.redis_offset, part)
            except BaseException:
                part.give_back(delta)
                raise
            if status == "ok":
                part.redis_offset = offset
                return Outcome.OK
            if status == "stale":
                return self._fenced(part, stored)
            log.warning(
                "table %s partition %d: Redis lost its copy (holds offset %r, this worker wrote %r): rewriting it",
                self.keys.table,
                part.partition,
                stored or None,
                part.redis_offset,
            )
            # the rewrite writes every confirmed value, the delta's included
            part.rewrite = True
        snapshot, offset = part.take_snapshot()
        try:
            status, stored = await self._write_snapshot(keys, snapshot, offset, part)
        except BaseException:
            part.rewrite = True
            raise
        if status == "stale":
            return self._fenced(part, stored)
        part.redis_offset = offset
        log.info(
            "table %s partition %d: rewrote %d keys at offset %d",
            self.keys.table,
            part.partition,
            len(snapshot),
            offset,
        )
        return Outcome.OK

    def _fenced(self, part: PartitionState, stored: str) -> Outcome:
        part.fenced = True
        log.error(
            "table %s partition %d: Redis holds offset %s, newer than this worker's %r: another worker owns it; "
            "this worker stops writing it",
            self.keys.table,
            part.partition,
            stored,
            part.offset,
        )
        return Outcome.STALE

    async def _write_delta(
        self, keys: PartitionKeys, delta: dict[bytes, Change], offset: int, expected: int | None, part: PartitionState
    ) -> tuple[str, str]:
        sets = [(key, value) for key, value in delta.items() if value is not None]
        dels = [key for key, value in delta.items() if value is None]
        now_ms = int(time.time() * 1000)
        batches = list(_chunks(sets, dels, self.chunk))
        status, stored = "ok", ""
        for n, (chunk_sets, chunk_dels) in enumerate(batches):
            final = n == len(batches) - 1
            args: list[Any] = [offset, "" if expected is None else expected, "1" if final else "0"]
            args += [self.ttl_ms, now_ms, len(chunk_sets), *self._flat(chunk_sets, part, now_ms), *chunk_dels]
            status, stored = _answer(await self._delta(keys=[keys.data, keys.meta, keys.expires], args=args))
            if status != "ok":
                return status, stored
        return status, stored

    async def _write_snapshot(
        self, keys: PartitionKeys, snapshot: dict[bytes, bytes], offset: int, part: PartitionState
    ) -> tuple[str, str]:
        now_ms = int(time.time() * 1000)
        batches = list(_chunks(list(snapshot.items()), [], self.chunk))
        rewrite_keys = [
            keys.data,
            keys.meta,
            keys.expires,
            keys.rewrite_data(self.writer),
            keys.rewrite_expires(self.writer),
        ]
        status, stored = "ok", ""
        for n, (chunk_sets, _) in enumerate(batches):
            first, final = n == 0, n == len(batches) - 1
            args: list[Any] = [offset, "1" if first else "0", "1" if final else "0", self.ttl_ms, len(chunk_sets)]
            args += self._flat(chunk_sets, part, now_ms)
            status, stored = _answer(await self._rewrite(keys=rewrite_keys, args=args))
            if status != "ok":
                return status, stored
        return status, stored

    def _flat(self, sets: Sequence[tuple[bytes, bytes]], part: PartitionState, now_ms: int) -> Iterator[Any]:
        if not self.ttl_ms:
            for key, value in sets:
                yield key
                yield value
            return
        deadlines = part.deadlines
        for key, value in sets:
            deadline = deadlines.get(key)
            yield key
            yield value
            yield int(deadline * 1000) if deadline is not None else now_ms + self.ttl_ms

    # -- reading -------------------------------------------------------------------------------------------

    async def read(self, partition: int, key: bytes) -> bytes | None:
        """One key's value as Redis holds it (written behind: as of the last flush), None if absent or expired."""
        keys = self.keys.partition(partition)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hget(keys.data, key)
            pipe.zscore(keys.expires, key)
            value, deadline_ms = await pipe.execute()
        if value is None or (self.ttl_ms and deadline_ms is not None and deadline_ms <= time.time() * 1000):
            return None
        return bytes(value)

    async def load(self, partition: int) -> Loaded:
        """A consistent copy of ``partition``: read whole between two identical reads of its offset and size.

        The offset is read first: a delta written meanwhile only puts values ahead of it, which the replay
        from that offset writes again; a rewrite or a wipe changes the offset and size, so the read is redone.
        """
        keys = self.keys.partition(partition)
        for _ in range(LOAD_ATTEMPTS):
            head = await self.client.hmget(keys.meta, ["offset", "size"])
            if head[0] is None:
                return Loaded({}, None)
            data: dict[bytes, bytes] = {}
            cursor = 0
            while True:
                cursor, chunk = await self.client.hscan(keys.data, cursor, count=SCAN_COUNT)
                data.update(cast(dict[bytes, bytes], chunk))
                if cursor == 0:
                    break
            deadlines: dict[bytes, float] = {}
            if self.ttl_ms:
                cursor = 0
                while True:
                    cursor, members = await self.client.zscan(keys.expires, cursor, count=SCAN_COUNT)
                    scored = cast(list[tuple[bytes, float]], members)
                    deadlines.update((member, score / 1000) for member, score in scored)
                    if cursor == 0:
                        break
            tail = await self.client.hmget(keys.meta, ["offset", "size"])
            if tail == head and head[1] is not None and len(data) == int(head[1]):
                return self._loaded(data, int(head[0]), deadlines)
            log.info("table %s partition %d changed while it was read: reading it again", self.keys.table, partition)
        log.warning(
            "table %s partition %d: no consistent read in %d attempts: recovering it from the changelog",
            self.keys.table,
            partition,
            LOAD_ATTEMPTS,
        )
        return Loaded({}, None)

    def _loaded(self, data: dict[bytes, bytes], offset: int, deadlines: dict[bytes, float]) -> Loaded:
        if not self.ttl_ms:
            return Loaded(data, offset)
        now = time.time()
        # a value without a deadline, or past it, has expired (Redis purges such fields on the next flush)
        live = sorted((deadline, key) for key, deadline in deadlines.items() if deadline > now and key in data)
        return Loaded({key: data[key] for _, key in live}, offset, [(key, deadline) for deadline, key in live])

    # -- wiping --------------------------------------------------------------------------------------------

    async def wipe(self) -> int:
        """Delete every key of the table (all partitions, every app instance using this prefix and app id)."""
        removed = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=self.keys.pattern(), count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += await self.client.unlink(*batch)
                batch = []
        if batch:
            removed += await self.client.unlink(*batch)
        return removed


def wipe_blocking(url: str, keys: TableKeys, **options: Any) -> int:
    """:meth:`RedisPartitions.wipe` for faust's synchronous ``reset_state`` (a CLI command, not a hot path)."""
    client = redis_client.connect_sync(url, **options)
    try:
        removed = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=keys.pattern(), count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += client.unlink(*batch)
                batch = []
        if batch:
            removed += client.unlink(*batch)
        return removed
    finally:
        client.close()


def _chunks(
    sets: Sequence[tuple[bytes, bytes]], dels: Sequence[bytes], size: int
) -> Iterable[tuple[Sequence[tuple[bytes, bytes]], Sequence[bytes]]]:
    """At most ``size`` changes per script call (Redis runs a script alone: keep each call short)."""
    if not sets and not dels:
        yield (), ()
        return
    for start in range(0, len(sets), size):
        yield sets[start : start + size], ()
    for start in range(0, len(dels), size):
        yield (), dels[start : start + size]


def _answer(reply: Any) -> tuple[str, str]:
    status, stored = reply
    return _text(status), _text(stored)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
