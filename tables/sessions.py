"""Per-session tables, key session_id, in the app's table store (``SOMA_TABLE_STORE``, Redis by default).

``session_state``: head seq (the session's event count), last activity, persona and metadata.
``session_meta``: the session metadata cache (persona, metadata), forgotten ``SOMA_SESSION_CACHE_TTL_SECONDS``
after its last write (the seed's ``session:{session_id}:meta`` with its 900 s TTL).

Both are written by the agents after each stored batch, from the envelope rows Postgres returned, so a value
is always a copy of committed state (never a counter that a replay could bump twice).
"""

from __future__ import annotations

from typing import Any

import faust

from app import app

SCHEMA: faust.Schema[str, Any] = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")

session_state = app.Table(
    "session_state",
    default=None,
    partitions=app.settings.topic_partitions,
    schema=SCHEMA,
    help="head seq, last activity, persona and metadata of each session, mirrored from Postgres",
)

session_meta = app.Table(
    "session_meta",
    default=None,
    partitions=app.settings.topic_partitions,
    schema=SCHEMA,
    # the redis:// store expires a key this long after its last write (memory:// keeps it)
    options={"ttl": app.settings.session_cache_ttl_seconds},
    help="persona and metadata of recently active sessions (a cache with a TTL)",
)


def state_of(envelope: Any) -> dict[str, Any]:
    """The ``session_state`` value of one :class:`app.repository.Envelope`."""
    return {
        "last_seq": envelope.last_seq,
        "last_activity": envelope.updated_at,
        "persona_id": envelope.persona_id,
        "metadata": envelope.metadata,
    }


def meta_of(envelope: Any) -> dict[str, Any]:
    """The ``session_meta`` value of one envelope."""
    return {"persona_id": envelope.persona_id, "metadata": envelope.metadata, "updated_at": envelope.updated_at}


def mirror_session(session_id: str, envelope: Any) -> None:
    """Write a session's committed envelope to both tables (from within an event of the session's partition)."""
    session_state[session_id] = state_of(envelope)
    session_meta[session_id] = meta_of(envelope)
