"""The Postgres session repository: sequenced, idempotent event storage and envelope upserts."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import aiopg

# Claims the gateway merges into metadata; the envelope keeps them in columns of their own.
ENVELOPE_CLAIMS = ("tenant", "subject", "issuer", "scope")

_UPSERT_ENVELOPE = """
INSERT INTO session_envelopes AS e (session_id, persona_id, tenant, subject, issuer, scope, metadata, last_seq)
VALUES (%(session_id)s, %(persona_id)s, %(tenant)s, %(subject)s, %(issuer)s, %(scope)s, %(metadata)s::jsonb, 1)
ON CONFLICT (session_id) DO UPDATE SET
    persona_id = COALESCE(NULLIF(EXCLUDED.persona_id, ''), e.persona_id),
    tenant     = COALESCE(NULLIF(EXCLUDED.tenant, ''), e.tenant),
    subject    = COALESCE(NULLIF(EXCLUDED.subject, ''), e.subject),
    issuer     = COALESCE(NULLIF(EXCLUDED.issuer, ''), e.issuer),
    scope      = COALESCE(NULLIF(EXCLUDED.scope, ''), e.scope),
    metadata   = e.metadata || EXCLUDED.metadata,
    last_seq   = e.last_seq + 1,
    updated_at = now()
RETURNING last_seq
"""

_INSERT_EVENT = """
INSERT INTO session_events (event_id, session_id, seq, type, role, payload, occurred_at,
                            source_topic, source_partition, source_offset)
VALUES (%(event_id)s, %(session_id)s, %(seq)s, %(type)s, %(role)s, %(payload)s::jsonb,
        COALESCE(%(occurred_at)s::timestamptz, now()), %(topic)s, %(partition)s, %(offset)s)
ON CONFLICT (event_id) DO NOTHING
RETURNING seq
"""


@dataclass(frozen=True)
class Source:
    """Where an event was read from: kept beside the row for audits and redrives."""

    topic: str
    partition: int
    offset: int


async def store_event(pool: aiopg.Pool, event: dict[str, Any], source: Source) -> int | None:
    """Store ``event`` as its session's next seq in one transaction; None when its event_id is stored already.

    The envelope upsert takes the session row's lock, so concurrent writers of one session serialise and
    a duplicate rolls back its seq increment: seqs stay gap-free.
    """
    metadata = event.get("metadata") or {}
    params = {
        "session_id": event["session_id"],
        "persona_id": event.get("persona_id"),
        "metadata": json.dumps(metadata),
        **{claim: metadata.get(claim) for claim in ENVELOPE_CLAIMS},
    }
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT 1 FROM session_events WHERE event_id = %s", (event["event_id"],))
        if await cur.fetchone() is not None:
            return None
        await cur.execute("BEGIN")
        try:
            await cur.execute(_UPSERT_ENVELOPE, params)
            (seq,) = await cur.fetchone()
            stored = {**event, "seq": seq}
            await cur.execute(
                _INSERT_EVENT,
                {
                    "event_id": event["event_id"],
                    "session_id": event["session_id"],
                    "seq": seq,
                    "type": event["type"],
                    "role": event["role"],
                    "payload": json.dumps(stored),
                    "occurred_at": event.get("occurred_at"),
                    "topic": source.topic,
                    "partition": source.partition,
                    "offset": source.offset,
                },
            )
            inserted = await cur.fetchone()
            if inserted is None:
                await cur.execute("ROLLBACK")
                return None
            await cur.execute("COMMIT")
            return int(seq)
        except BaseException:
            # a broken connection cannot roll back; the pool discards it either way
            with contextlib.suppress(Exception):
                await cur.execute("ROLLBACK")
            raise
