"""How long accepted messages wait to be stored, across every worker: what a client message is refused on.

A 202 promises the event will be stored. Past capacity (storage slower than intake, PostgreSQL away, a
partition without a live owner) the accepted events would pile up in Kafka without bound, and with them the
time before anyone sees a message. So a worker refuses a client message (503 ``storage_behind``, Retry-After)
while the oldest message any worker accepted and no worker has stored yet was accepted more than
``SOMA_MAX_STORAGE_LAG_SECONDS`` ago: the wait of accepted messages stays bounded, and the refusal comes before
anything is sent, so nothing refused was accepted.

The lag is measured on the promise itself, not on record timestamps (a replay of old records must not look
like a lag of days): each worker remembers the partition and offset of every message it accepted and when;
the workers that store a partition share how far they have processed it (in one Redis hash, every 0.5 s);
a worker's own lag is the age of its oldest accepted message past that point, and it shares that too.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mode import Service
from redis.exceptions import RedisError

from app.errors import ApiError

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger(__name__)

# how often a worker shares what it stored and its lag, and reads the others'; a lag reported longer ago
# than STALE_SECONDS is ignored (its worker died or lost Redis) and one older than FORGET_SECONDS removed
REPORT_SECONDS = 0.5
STALE_SECONDS = 3.0
FORGET_SECONDS = 60.0
# accepted messages remembered per partition at most (a refusal comes long before: rate x limit)
MAX_REMEMBERED = 100_000


class StorageBehind(ApiError):
    """Accepted messages wait longer than ``SOMA_MAX_STORAGE_LAG_SECONDS`` to be stored: refused before sending."""

    code = "storage_behind"


class StorageLag(Service):
    """This worker's accepted-but-unstored messages, the partitions' processed offsets, the workers' lags."""

    def __init__(self, settings: Settings, redis: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.redis = redis
        self.lags_key = f"{settings.redis_prefix}storage-lag"
        self.offsets_key = f"{settings.redis_prefix}storage-processed"
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{settings.web_port}"
        # "topic:partition" -> (offset, accepted at) of the messages this worker accepted, oldest first
        self._accepted: dict[str, deque[tuple[int, float]]] = {}
        # "topic:partition" -> the next offset to process: what this worker processed, and what others shared
        self._processed: dict[str, int] = {}
        self._processed_here: dict[str, int] = {}
        self._reported: dict[str, int] = {}  # what this worker last wrote of _processed_here
        self.others = 0.0  # the highest lag another worker reported within STALE_SECONDS
        self._shared_at: float | None = None  # when the other workers' progress was last read from Redis
        self.refused = 0  # client messages refused since start

    # -- what the worker does ---------------------------------------------------------------------------------

    def accepted(self, topic: str, partition: int, offset: int, at: float | None = None) -> None:
        """A client message was acked by the broker at ``offset``: it waits to be stored from now (``at``) on."""
        waiting = self._accepted.setdefault(f"{topic}:{partition}", deque())
        if len(waiting) < MAX_REMEMBERED:
            waiting.append((offset, time.time() if at is None else at))

    def processed(self, positions: Iterable[tuple[str, int, int]]) -> None:
        """Records (topic, partition, offset) stored or dead-lettered, and acked: processed past each offset."""
        for topic, partition, offset in positions:
            tp = f"{topic}:{partition}"
            if offset >= self._processed_here.get(tp, 0):
                self._processed_here[tp] = offset + 1
                if offset >= self._processed.get(tp, 0):
                    self._processed[tp] = offset + 1

    def local(self, now: float | None = None) -> float:
        """The age of the oldest message this worker accepted that no worker has processed yet.

        A partition this worker does not store counts only while the others' progress is known (read from
        Redis within STALE_SECONDS): without Redis, its messages may well be stored, and none is refused
        for it (fail open).
        """
        now = time.time() if now is None else now
        shared = self._shared_at is not None and now - self._shared_at <= STALE_SECONDS
        oldest = now
        for tp, waiting in self._accepted.items():
            done = self._processed.get(tp, 0)
            while waiting and waiting[0][0] < done:
                waiting.popleft()
            if waiting and (shared or tp in self._processed_here):
                oldest = min(oldest, waiting[0][1])
        return now - oldest

    def current(self) -> float:
        """How long an accepted message waits to be stored now: this worker's lag, or another's if higher."""
        return max(self.local(), self.others)

    def check(self) -> None:
        """Raise StorageBehind when accepted messages wait longer than the limit (0 turns the check off)."""
        limit = self.settings.max_storage_lag_seconds
        if limit <= 0:
            return
        lag = self.current()
        if lag > limit:
            self.refused += 1
            retry_after = max(1, min(30, round(lag - limit) + 1))
            raise StorageBehind(
                f"accepted messages wait {lag:.1f} s to be stored (limit {limit:g} s); retry after {retry_after} s",
                retry_after=retry_after,
            )

    # -- sharing ----------------------------------------------------------------------------------------------

    @Service.task
    async def _share(self) -> None:
        while not self.should_stop:
            try:
                await self.exchange()
            except (RedisError, OSError) as exc:
                # without Redis each worker goes by what it processed itself; the others' lags go stale
                log.debug("sharing the storage lag failed: %r", exc)
                self.others = 0.0
            await self.sleep(REPORT_SECONDS)

    async def exchange(self) -> None:
        """Share what this worker processed and its lag; read the others' (one round trip, two if some are old)."""
        now = time.time()
        # only what moved since the last report: a partition this worker no longer stores (a rebalance) is not
        # written back over its new owner's progress
        moved = {tp: offset for tp, offset in self._processed_here.items() if self._reported.get(tp) != offset}
        async with self.redis.pipeline(transaction=False) as pipe:
            if moved:
                pipe.hset(self.offsets_key, mapping=moved)
            pipe.hset(self.lags_key, self.worker, f"{self.local(now):.3f} {now:.3f}")
            pipe.expire(self.offsets_key, int(FORGET_SECONDS))
            pipe.expire(self.lags_key, int(FORGET_SECONDS))
            pipe.hgetall(self.offsets_key)
            pipe.hgetall(self.lags_key)
            *_, offsets, lags = await pipe.execute()
        self._reported.update(moved)
        for tp, offset in offsets.items():
            name, value = tp.decode(), int(offset)
            # a partition processed further than this worker saw (by its owner, or by this worker since)
            self._processed[name] = max(value, self._processed.get(name, 0), self._processed_here.get(name, 0))
        self._shared_at = now
        self.others, forgotten = _highest(lags.items(), self.worker, now)
        if forgotten:
            await self.redis.hdel(self.lags_key, *forgotten)


def _highest(reports: Iterable[tuple[bytes, bytes]], own: str, now: float) -> tuple[float, list[bytes]]:
    """The highest fresh lag of the other workers' reports, and the reports to remove as forgotten."""
    highest = 0.0
    forgotten = []
    for worker, report in reports:
        try:
            lag, at = (float(part) for part in report.split())
        except ValueError:
            forgotten.append(worker)
            continue
        if now - at > FORGET_SECONDS:
            forgotten.append(worker)
        elif worker.decode() != own and now - at <= STALE_SECONDS:
            highest = max(highest, lag)
    return highest, forgotten
