"""The session table, key session_id, in the app's table store (``SOMA_TABLE_STORE``, Redis by default).

``session_state``: the session's envelope as PostgreSQL returned it after its last stored batch (head seq =
the session's event count, persona, tenant, metadata, ...). Its reader: ``GET /v1/session/{id}`` on any replica
answers from it (read from Redis) while PostgreSQL does not answer, marked ``stale``. It forgets a session
``SOMA_SESSION_CACHE_TTL_SECONDS`` after its last write (the seed's ``session:{session_id}:meta`` cache with its
900 s TTL, which it replaces), so its size is bounded by the sessions recently active.

It holds copies of committed state (the envelope rows Postgres returned after a batch), never a counter that
a replay could bump twice. Every table write is a changelog record that faust's producer buffer sends one at a
time, and a full buffer stops intake; so the agents do not write per batch. They note each stored session in
:data:`mirror`, which a timer writes out every ``SOMA_TABLE_MIRROR_INTERVAL_SECONDS``: one write per active
session per interval. Before partitions are handed over (a rebalance, after faust has
drained the agents) and when the agents stop, everything noted is written out and flushed, so the next owner
recovers the tables complete. Freshness: a reader sees a session's state as of at most one interval (plus
the changelog's ack) ago; after a crash, as of the last write-out before it, so ``last_seq`` is a lower
bound of the stored head, never above it.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from typing import TYPE_CHECKING, Any

from aiokafka.partitioner import DefaultPartitioner

from app import app
from tables.partitioning import in_partition_of, session_table
from tables.redis_store import RedisStore

if TYPE_CHECKING:
    from faust.types import EventT

log = logging.getLogger(__name__)

session_state = session_table(
    "session_state",
    ttl_seconds=app.settings.session_cache_ttl_seconds,
    help="the envelope of each recently active session (head seq, persona, metadata...), mirrored from Postgres",
)


def state_of(envelope: Any) -> dict[str, Any]:
    """The ``session_state`` value of one :class:`app.repository.Envelope`: the envelope as the API answers it."""
    value: dict[str, Any] = envelope.as_json()
    return value


_PARTITIONER = DefaultPartitioner()


async def stored_state(session_id: str) -> dict[str, Any] | None:
    """The session's ``session_state`` as Redis holds it, on any replica; None if absent or not in Redis.

    As of the session's last write-out before its last flush: at most ``SOMA_TABLE_MIRROR_INTERVAL_SECONDS`` +
    ``SOMA_TABLE_FLUSH_INTERVAL_SECONDS`` behind what its worker stored, and after a crash as of the last flush
    before it (``last_seq`` a lower bound of the stored head, never above it).
    """
    store = session_state.data
    if not isinstance(store, RedisStore):
        return None  # memory:// tables live in their worker only
    partitions = list(range(app.settings.topic_partitions))
    # the session's records, and so its changelog records, are in the partition its key hashes to
    partition = _PARTITIONER(session_id.encode(), partitions, partitions)
    raw = await store.read_behind(partition, store._encode_key(session_id))
    if raw is None:
        return None
    value: dict[str, Any] = store._decode_value(raw)
    return value


class SessionMirror:
    """The latest committed envelope of each session stored since the last write-out, and its last event."""

    def __init__(self) -> None:
        self._dirty: dict[str, tuple[Any, EventT[Any]]] = {}

    def __len__(self) -> int:
        return len(self._dirty)

    def note(self, session_id: str, envelope: Any, event: EventT[Any]) -> None:
        self._dirty[session_id] = (envelope, event)

    def write_out(self) -> int:
        """Write every noted session to the tables (changelog records sent by faust); returns the writes made."""
        dirty, self._dirty = self._dirty, {}
        for session_id, (envelope, event) in dirty.items():
            with in_partition_of(event):
                session_state[session_id] = state_of(envelope)
        return len(dirty)


mirror = SessionMirror()


@app.timer(app.settings.table_mirror_interval_seconds, name="session table write-out")  # type: ignore[untyped-decorator]
async def write_out_sessions() -> None:
    """Timer: the noted sessions to ``session_state`` (changelog records, no other I/O)."""
    if len(mirror):
        mirror.write_out()


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def write_out_before_handover(app: Any, revoked: Set[Any], **kwargs: Any) -> None:
    """Faust has drained the agents: write out what they noted and wait for the changelog to take it."""
    if len(mirror):
        writes = mirror.write_out()
        await app.producer.buffer.flush()
        await app.producer.flush()
        log.info("session tables: %d writes before handing over %d partitions", writes, len(revoked))
