"""The Postgres session repository: batches of events stored with gap-free per-session seqs, exactly once."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import aiopg

from app import events

# Claims the gateway merges into metadata; the envelope keeps them in columns of their own.
ENVELOPE_CLAIMS = ("tenant", "subject", "issuer", "scope")

_ENSURE_ENVELOPES = """
INSERT INTO session_envelopes (session_id) SELECT unnest(%s::text[]) ON CONFLICT (session_id) DO NOTHING
"""
# the row locks serialise every writer of these sessions until COMMIT; sorted, so two batches never deadlock
_LOCK_ENVELOPES = """
SELECT session_id, last_seq FROM session_envelopes WHERE session_id = ANY(%s::text[]) ORDER BY session_id FOR UPDATE
"""
_STORED_IDS = "SELECT event_id::text FROM session_events WHERE event_id = ANY(%s::uuid[])"
_INSERT_EVENTS = """
INSERT INTO session_events (event_id, session_id, seq, type, role, payload, occurred_at,
                            source_topic, source_partition, source_offset)
SELECT e.event_id, e.session_id, e.seq, e.type, e.role, e.payload, COALESCE(e.occurred_at, now()),
       e.topic, e.partition, e.offset_
FROM unnest(%s::uuid[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::jsonb[], %s::timestamptz[],
            %s::text[], %s::int[], %s::bigint[])
     AS e(event_id, session_id, seq, type, role, payload, occurred_at, topic, partition, offset_)
ON CONFLICT (event_id) DO NOTHING
"""
# seed rules: keep old values when the new ones are empty; merge metadata
_UPDATE_ENVELOPES = """
UPDATE session_envelopes AS e SET
    last_seq   = v.last_seq,
    persona_id = COALESCE(NULLIF(v.persona_id, ''), e.persona_id),
    tenant     = COALESCE(NULLIF(v.tenant, ''), e.tenant),
    subject    = COALESCE(NULLIF(v.subject, ''), e.subject),
    issuer     = COALESCE(NULLIF(v.issuer, ''), e.issuer),
    scope      = COALESCE(NULLIF(v.scope, ''), e.scope),
    metadata   = e.metadata || v.metadata,
    updated_at = now()
FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[])
     AS v(session_id, last_seq, persona_id, tenant, subject, issuer, scope, metadata)
WHERE e.session_id = v.session_id
"""
_READ_ENVELOPES = """
SELECT session_id, last_seq, persona_id, metadata, updated_at FROM session_envelopes
WHERE session_id = ANY(%s::text[])
"""


@dataclass(frozen=True)
class Source:
    """Where an event was read from: kept beside the row for audits and redrives."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Incoming:
    """A decoded, valid event and where it came from; ``type`` and ``role`` are set."""

    event: dict[str, Any]
    source: Source
    # the consumed record (a faust event) it was decoded from: what is dead-lettered if it cannot be stored
    origin: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Envelope:
    session_id: str
    last_seq: int
    persona_id: str | None
    metadata: dict[str, str]
    updated_at: str


@dataclass
class BatchResult:
    stored: list[dict[str, Any]] = field(default_factory=list)  # new events with their seq, in batch order
    encoded: list[bytes] = field(default_factory=list)  # the JSON of each stored event, as stored and fed
    duplicates: list[Incoming] = field(default_factory=list)  # events whose event_id was stored already
    envelopes: dict[str, Envelope] = field(default_factory=dict)  # every session of the batch, after it


class ConcurrentInsert(Exception):
    """Another writer stored one of the batch's event ids between our check and our insert; retry the batch."""


class _SessionChange:
    """One session's envelope change within a batch (plain slots: a batch makes hundreds)."""

    __slots__ = ("changed", "claims", "last_seq", "metadata", "persona_id")

    def __init__(self, last_seq: int) -> None:
        self.last_seq = last_seq
        self.persona_id: str | None = None
        self.claims: dict[str, str | None] = dict.fromkeys(ENVELOPE_CLAIMS)
        self.metadata: dict[str, str] = {}
        self.changed = False


async def store_batch(pool: aiopg.Pool, items: list[Incoming]) -> BatchResult:
    """Store every new event of ``items`` as its session's next seq, in order, in one transaction.

    Idempotent on ``event_id``: an event stored before (or twice in the batch) is reported as a duplicate
    and gets no seq. Raises ConcurrentInsert (nothing stored) when a concurrent writer raced us.
    """
    result = BatchResult()
    sessions = sorted({item.event["session_id"] for item in items})
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("BEGIN")
        try:
            await cur.execute(_ENSURE_ENVELOPES, (sessions,))
            await cur.execute(_LOCK_ENVELOPES, (sessions,))
            changes = {sid: _SessionChange(last_seq) for sid, last_seq in await cur.fetchall()}
            await cur.execute(_STORED_IDS, ([item.event["event_id"] for item in items],))
            seen = {row[0] for row in await cur.fetchall()}
            rows: list[tuple[Any, ...]] = []
            for item in items:
                event = item.event
                if event["event_id"] in seen:
                    result.duplicates.append(item)
                    continue
                seen.add(event["event_id"])
                change = changes[event["session_id"]]
                change.last_seq += 1
                change.changed = True
                _merge(change, event)
                stored = {**event, "seq": change.last_seq}
                encoded = events.encode(stored)
                result.stored.append(stored)
                result.encoded.append(encoded)
                rows.append(
                    (
                        event["event_id"],
                        event["session_id"],
                        change.last_seq,
                        event["type"],
                        event["role"],
                        encoded.decode(),
                        event.get("occurred_at"),
                        item.source.topic,
                        item.source.partition,
                        item.source.offset,
                    )
                )
            if rows:
                await cur.execute(_INSERT_EVENTS, [list(column) for column in zip(*rows, strict=True)])
                if cur.rowcount != len(rows):
                    raise ConcurrentInsert(f"{len(rows) - cur.rowcount} of {len(rows)} events were stored meanwhile")
                updates = [
                    (sid, c.last_seq, c.persona_id, *c.claims.values(), events.encode(c.metadata).decode())
                    for sid, c in changes.items()
                    if c.changed
                ]
                await cur.execute(_UPDATE_ENVELOPES, [list(column) for column in zip(*updates, strict=True)])
            await cur.execute(_READ_ENVELOPES, (sessions,))
            for sid, last_seq, persona_id, metadata, updated_at in await cur.fetchall():
                result.envelopes[sid] = Envelope(sid, last_seq, persona_id, metadata, updated_at.isoformat())
            await cur.execute("COMMIT")
        except BaseException:
            # a broken connection cannot roll back; the pool discards it either way
            with contextlib.suppress(Exception):
                await cur.execute("ROLLBACK")
            raise
    return result


def _merge(change: _SessionChange, event: dict[str, Any]) -> None:
    """Fold one event into its session's envelope change, later non-empty values winning."""
    if event.get("persona_id"):
        change.persona_id = event["persona_id"]
    metadata = event.get("metadata") or {}
    for claim in ENVELOPE_CLAIMS:
        if metadata.get(claim):
            change.claims[claim] = metadata[claim]
    change.metadata.update(metadata)


async def stored_ids(pool: aiopg.Pool, event_ids: list[str]) -> set[str]:
    """Which of ``event_ids`` are stored."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(_STORED_IDS, (event_ids,))
        return {row[0] for row in await cur.fetchall()}


_EVENTS_AFTER = """
SELECT payload FROM session_events WHERE session_id = %s AND seq > %s AND seq < %s ORDER BY seq LIMIT %s
"""
_ENVELOPE = """
SELECT session_id, persona_id, tenant, subject, issuer, scope, metadata, analysis, last_seq, created_at, updated_at
FROM session_envelopes WHERE session_id = %s
"""


async def events_after(
    pool: aiopg.Pool, session_id: str, after: int, limit: int, before: int | None = None
) -> list[dict[str, Any]]:
    """Stored events of a session with ``after < seq < before``, in seq order, at most ``limit`` of them."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(_EVENTS_AFTER, (session_id, after, before if before is not None else 2**62, limit))
        return [row[0] for row in await cur.fetchall()]


async def envelope(pool: aiopg.Pool, session_id: str) -> dict[str, Any] | None:
    """The session's envelope as JSON-ready values, or None for an unknown session."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(_ENVELOPE, (session_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        names = [column.name for column in cur.description or ()]
    found = dict(zip(names, row, strict=True))
    for stamp in ("created_at", "updated_at"):
        found[stamp] = found[stamp].isoformat()
    return found


async def stored_event(pool: aiopg.Pool, event_id: str) -> dict[str, Any] | None:
    """The stored JSON of event ``event_id``, or None."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT payload FROM session_events WHERE event_id = %s", (event_id,))
        row = await cur.fetchone()
        return None if row is None else dict(row[0])


async def head_seq(pool: aiopg.Pool, session_id: str) -> int:
    """The highest seq stored for the session (0 for a session with no events)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT last_seq FROM session_envelopes WHERE session_id = %s", (session_id,))
        row = await cur.fetchone()
        return int(row[0]) if row else 0
