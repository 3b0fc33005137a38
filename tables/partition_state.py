"""The local state of one table partition: the values faust reads, and what is still to be written to Redis."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

Change = bytes | None  # a value, or None for a deletion


class InFlight:
    """Changes of one key sent to the changelog but not confirmed yet, and the key's last confirmed value."""

    __slots__ = ("confirmed", "count")

    def __init__(self, confirmed: Change) -> None:
        self.count = 1
        self.confirmed = confirmed


@dataclass(eq=False)
class PartitionState:
    """Values of one partition, plus the changes the changelog has confirmed but Redis does not hold yet.

    Two streams of changes arrive: faust's own writes (``set``/``delete``, the live values served to
    readers, their changelog records still in flight) and records the changelog has confirmed (``confirm``
    for records this worker produced, ``apply`` for records read back during recovery or as a standby).
    Only confirmed records reach ``dirty``, so Redis always holds a prefix of the changelog: what a full
    replay up to ``offset`` would give (minus expired keys of a TTL table).
    """

    partition: int
    data: dict[bytes, bytes] = field(default_factory=dict)
    # this worker processes the partition (else: a standby, which never writes Redis)
    active: bool = False
    # highest changelog offset whose record is reflected in ``data`` (faust's persisted offset)
    offset: int | None = None
    # changes confirmed by the changelog, not yet in Redis: key -> value (None: delete)
    dirty: dict[bytes, Change] = field(default_factory=dict)
    # the offset Redis holds for this partition as far as this worker knows (None: no snapshot)
    redis_offset: int | None = None
    # keys with changes in flight: a full rewrite writes their last confirmed value, not the live one
    inflight: dict[bytes, InFlight] = field(default_factory=dict)
    # TTL tables: key -> deadline (epoch seconds), oldest write first
    deadlines: OrderedDict[bytes, float] = field(default_factory=OrderedDict)
    # Redis must be rewritten whole (its copy was lost, or could not be read)
    rewrite: bool = False
    # another writer holds a newer offset: this worker no longer owns the partition in Redis
    fenced: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # -- faust's writes (changelog record in flight) ---------------------------------------------------

    def set(self, key: bytes, value: Change, deadline: float | None = None) -> None:
        self._track_inflight(key)
        self._put(key, value, deadline)

    def _put(self, key: bytes, value: Change, deadline: float | None) -> None:
        if value is None:
            self.data.pop(key, None)
            self.deadlines.pop(key, None)
        else:
            self.data[key] = value
            if deadline is not None:
                self.deadlines[key] = deadline
                self.deadlines.move_to_end(key)

    def _track_inflight(self, key: bytes) -> None:
        pending = self.inflight.get(key)
        if pending is None:
            self.inflight[key] = InFlight(self.data.get(key))
        else:
            pending.count += 1

    # -- confirmed changelog records ---------------------------------------------------------------------

    def confirm(self, offset: int, key: bytes, value: Change) -> None:
        """The changelog stored this worker's record of ``key`` at ``offset``."""
        pending = self.inflight.get(key)
        if pending is not None:
            pending.count -= 1
            pending.confirmed = value
            if pending.count <= 0:
                del self.inflight[key]
        self.dirty[key] = value
        self._advance(offset)

    def apply(self, offset: int, key: bytes, value: Change, deadline: float | None = None) -> None:
        """A changelog record read back from Kafka (recovery or standby)."""
        # the record itself now stands for the key: nothing of this worker's is in flight for it any more
        self.inflight.pop(key, None)
        self._put(key, value, deadline)
        self.dirty[key] = value
        self._advance(offset)

    def _advance(self, offset: int) -> None:
        if self.offset is None or offset > self.offset:
            self.offset = offset

    # -- TTL ---------------------------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Forget keys whose deadline passed (no changelog record: expiry is local to the store)."""
        expired = 0
        deadlines = self.deadlines
        while deadlines:
            key, deadline = next(iter(deadlines.items()))
            if deadline > now:
                break
            del deadlines[key]
            self.data.pop(key, None)
            pending = self.inflight.get(key)
            if pending is not None:
                pending.confirmed = None
            self.dirty[key] = None
            expired += 1
        return expired

    # -- what a flush writes -----------------------------------------------------------------------------

    def has_work(self) -> bool:
        return self.active and not self.fenced and self.offset is not None and (bool(self.dirty) or self.rewrite)

    def take_delta(self) -> tuple[dict[bytes, Change], int]:
        """The confirmed changes to write, and the offset they make Redis complete up to."""
        if self.offset is None:
            raise RuntimeError(f"partition {self.partition} has no changelog offset to write")
        delta, self.dirty = self.dirty, {}
        return delta, self.offset

    def give_back(self, delta: dict[bytes, Change]) -> None:
        """A flush failed: its changes are written by the next one (newer changes of a key win)."""
        for key, value in delta.items():
            self.dirty.setdefault(key, value)

    def take_snapshot(self) -> tuple[dict[bytes, bytes], int]:
        """Every confirmed value, for a full rewrite: the live values with in-flight changes undone."""
        if self.offset is None:
            raise RuntimeError(f"partition {self.partition} has no changelog offset to write")
        snapshot = dict(self.data)
        for key, pending in self.inflight.items():
            if pending.confirmed is None:
                snapshot.pop(key, None)
            else:
                snapshot[key] = pending.confirmed
        self.dirty = {}
        self.rewrite = False
        return snapshot, self.offset
