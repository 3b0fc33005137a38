"""The Postgres session repository: batches of events stored with gap-free per-session seqs, exactly once."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import aiopg
import orjson
import psycopg2.errors

from app import events

log = logging.getLogger(__name__)

# Claims the gateway merges into metadata; the envelope keeps them in columns of their own.
ENVELOPE_CLAIMS = ("tenant", "subject", "issuer", "scope")

# A batch costs three round trips (a fourth when it replays stored events), and each envelope row is written
# once. The first reads which event ids are stored already. The second opens the transaction and, in one
# upsert, makes each session of the batch exist and raises its last_seq by its number of new events: the
# row locks it takes serialise every writer of these sessions until COMMIT (rows in session order, so two
# batches never deadlock), and the seqs between the old and the new last_seq are the batch's. The third
# inserts the events and commits: an event id stored by a concurrent writer meanwhile fails the insert on
# its unique index, which rolls all back. Rows travel as one JSON document each (orjson builds it far
# cheaper than psycopg2 adapts arrays).
_STORED_IDS = "SELECT event_id::text FROM session_events WHERE event_id = ANY(%s::uuid[])"
# Of the given stored events, those at their session's head: nothing but others of them stored after them, so
# no later publication can have made a viewer fetch them. A worker that died between its commit and its
# publication left exactly such events unpublished; they are fed again when their records are read again.
_UNFOLLOWED = """
SELECT e.payload FROM session_events e
WHERE e.event_id = ANY(%(ids)s::uuid[]) AND e.session_id <> ALL(%(fed)s::text[])
  AND NOT EXISTS (SELECT 1 FROM session_events later
                  WHERE later.session_id = e.session_id AND later.seq > e.seq
                    AND later.event_id <> ALL(%(ids)s::uuid[]))
ORDER BY e.session_id, e.seq
"""
# seed rules for the envelope: keep old values when the new ones are empty; merge metadata
_BEGIN_AND_ADVANCE = """
BEGIN;
INSERT INTO session_envelopes AS e (session_id, last_seq, persona_id, tenant, subject, issuer, scope, metadata)
SELECT v.session_id, v.added, NULLIF(v.persona_id, ''), NULLIF(v.tenant, ''), NULLIF(v.subject, ''),
       NULLIF(v.issuer, ''), NULLIF(v.scope, ''), COALESCE(v.metadata, '{}'::jsonb)
FROM jsonb_to_recordset(%s::jsonb)
     AS v(session_id text, added bigint, persona_id text, tenant text, subject text, issuer text, scope text,
          metadata jsonb)
ORDER BY v.session_id
ON CONFLICT (session_id) DO UPDATE SET
    last_seq   = e.last_seq + EXCLUDED.last_seq,
    persona_id = COALESCE(EXCLUDED.persona_id, e.persona_id),
    tenant     = COALESCE(e.tenant, EXCLUDED.tenant),  -- a session's tenant never changes once set
    subject    = COALESCE(EXCLUDED.subject, e.subject),
    issuer     = COALESCE(EXCLUDED.issuer, e.issuer),
    scope      = COALESCE(EXCLUDED.scope, e.scope),
    metadata   = e.metadata || EXCLUDED.metadata,
    updated_at = now()
RETURNING e.session_id, e.persona_id, e.tenant, e.subject, e.issuer, e.scope, e.metadata, e.analysis, e.last_seq,
          e.created_at, e.updated_at
"""
_INSERT_AND_COMMIT = """
INSERT INTO session_events (event_id, session_id, seq, type, role, payload, occurred_at,
                            source_topic, source_partition, source_offset)
SELECT e.event_id, e.session_id, e.seq, e.type, e.role, e.payload, COALESCE(e.occurred_at, now()),
       e.topic, e.partition, e.offset_
FROM jsonb_to_recordset(%s::jsonb)
     AS e(event_id uuid, session_id text, seq bigint, type text, role text, payload jsonb,
          occurred_at timestamptz, topic text, partition int, offset_ bigint);
COMMIT
"""
_EVENT_ID_UNIQUE = "session_events_event_id_key"


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
    # its processing span when traces are on (app/tracing.py)
    span: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Envelope:
    """A session's envelope after a batch: the row ``GET /v1/session/{id}`` answers (``as_json``)."""

    session_id: str
    persona_id: str | None
    tenant: str | None
    subject: str | None
    issuer: str | None
    scope: str | None
    metadata: dict[str, str]
    analysis: dict[str, Any]
    last_seq: int
    created_at: str
    updated_at: str

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BatchResult:
    stored: list[dict[str, Any]] = field(default_factory=list)  # new events with their seq, in batch order
    encoded: list[bytes] = field(default_factory=list)  # the JSON of each stored event, as stored and fed
    duplicates: list[Incoming] = field(default_factory=list)  # events whose event_id was stored already
    # duplicates stored by an earlier transaction and still at their session's head, in seq order per session,
    # of sessions with no new event in the batch: a replay, whose first worker may have died before it
    # published them, so they are fed again (viewers keep each seq once)
    republished: list[dict[str, Any]] = field(default_factory=list)
    envelopes: dict[str, Envelope] = field(default_factory=dict)  # every session with new events, after them


class ConcurrentInsert(Exception):
    """Another writer stored one of the batch's event ids between our check and our insert; retry the batch."""


class _SessionChange:
    """One session's envelope change within a batch (plain slots: a batch makes hundreds)."""

    __slots__ = ("added", "claims", "last_seq", "metadata", "persona_id")

    def __init__(self) -> None:
        self.added = 0  # the session's new events in the batch
        self.last_seq = 0  # once the envelope is advanced: the seq given last
        self.persona_id: str | None = None
        self.claims: dict[str, str | None] = dict.fromkeys(ENVELOPE_CLAIMS)
        self.metadata: dict[str, str] = {}


async def store_batch(pool: aiopg.Pool, items: list[Incoming]) -> BatchResult:
    """Store every new event of ``items`` as its session's next seq, in order, in one transaction.

    Idempotent on ``event_id``: an event stored before (or twice in the batch) is reported as a duplicate
    and gets no seq. Raises ConcurrentInsert (nothing stored) when a concurrent writer raced us.
    """
    result = BatchResult()
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(_STORED_IDS, ([item.event["event_id"] for item in items],))
        stored_before = {row[0] for row in await cur.fetchall()}
        seen = set(stored_before)
        changes: dict[str, _SessionChange] = {}
        new: list[tuple[Incoming, _SessionChange]] = []
        for item in items:
            event = item.event
            if event["event_id"] in seen:
                result.duplicates.append(item)
                continue
            seen.add(event["event_id"])
            change = changes.get(event["session_id"])
            if change is None:
                change = changes[event["session_id"]] = _SessionChange()
            change.added += 1
            _merge(change, event)
            new.append((item, change))
        if stored_before:
            # a session with new events needs none: a viewer that missed a duplicate fetches it on the gap
            await cur.execute(_UNFOLLOWED, {"ids": sorted(stored_before), "fed": sorted(changes)})
            result.republished = [row[0] for row in await cur.fetchall()]
        if not new:
            return result
        try:
            advances = [
                {"session_id": sid, "added": c.added, "persona_id": c.persona_id, **c.claims, "metadata": c.metadata}
                for sid, c in changes.items()
            ]
            await cur.execute(_BEGIN_AND_ADVANCE, (orjson.dumps(advances).decode(),))
            for row in await cur.fetchall():
                sid, persona_id, tenant, subject, issuer, scope, metadata, analysis, last_seq, created, updated = row
                found = Envelope(
                    sid, persona_id, tenant, subject, issuer, scope, metadata, analysis, last_seq,
                    created.isoformat(), updated.isoformat(),
                )  # fmt: skip
                # the batch's seqs of the session are last_seq - added + 1 .. last_seq
                changes[found.session_id].last_seq = found.last_seq - changes[found.session_id].added
                result.envelopes[found.session_id] = found
            rows: list[dict[str, Any]] = []
            for item, change in new:
                event = item.event
                change.last_seq += 1
                stored = {**event, "seq": change.last_seq}
                encoded = events.encode(stored)
                result.stored.append(stored)
                result.encoded.append(encoded)
                rows.append(
                    {
                        "event_id": event["event_id"],
                        "session_id": event["session_id"],
                        "seq": change.last_seq,
                        "type": event["type"],
                        "role": event["role"],
                        "payload": orjson.Fragment(encoded),
                        "occurred_at": event.get("occurred_at"),
                        "topic": item.source.topic,
                        "partition": item.source.partition,
                        "offset_": item.source.offset,
                    }
                )
            await cur.execute(_INSERT_AND_COMMIT, (orjson.dumps(rows).decode(),))
        except BaseException as exc:
            # a broken connection cannot roll back; the pool discards it either way
            try:
                await cur.execute("ROLLBACK")
            except Exception as rollback:
                log.debug("rollback after %r failed too (%r); the pool discards the connection", exc, rollback)
            if isinstance(exc, psycopg2.errors.UniqueViolation) and exc.diag.constraint_name == _EVENT_ID_UNIQUE:
                raise ConcurrentInsert(
                    f"an event of the batch was stored meanwhile ({exc.diag.message_detail})"
                ) from exc
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


# a session belongs to the first tenant that claims it (a POST, a stream, a ticket) or stores an event in it
_CLAIM = """
INSERT INTO session_envelopes AS e (session_id, tenant) VALUES (%s, %s)
ON CONFLICT (session_id) DO UPDATE SET tenant = COALESCE(e.tenant, EXCLUDED.tenant)
RETURNING e.tenant
"""


async def claim_session(pool: aiopg.Pool, session_id: str, tenant: str) -> str:
    """The session's tenant: ``tenant`` if the session had none (an empty envelope is made if need be)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        # read first: a claimed session (the usual case) costs no row lock against the store's writes
        await cur.execute("SELECT tenant FROM session_envelopes WHERE session_id = %s", (session_id,))
        row = await cur.fetchone()
        if row is None or row[0] is None:
            await cur.execute(_CLAIM, (session_id, tenant))
            row = await cur.fetchone()
        return str(row[0])


async def head_seq(pool: aiopg.Pool, session_id: str) -> int:
    """The highest seq stored for the session (0 for a session with no events)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT last_seq FROM session_envelopes WHERE session_id = %s", (session_id,))
        row = await cur.fetchone()
        return int(row[0]) if row else 0
