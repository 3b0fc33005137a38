"""Per-session state (table ``session_state``, key session_id): head seq, last activity, envelope cache.

Written by the agents after each stored batch, from the envelope rows Postgres returned, so a value is
always a copy of committed state (never a counter that a replay could bump twice).
"""

from __future__ import annotations

from typing import Any

import faust

from app import app

session_state = app.Table(
    "session_state",
    default=None,
    partitions=app.settings.topic_partitions,
    schema=faust.Schema(key_type=str, key_serializer="json", value_serializer="json"),
    help="head seq, last activity, persona and metadata of each session, mirrored from Postgres",
)


def state_of(envelope: Any) -> dict[str, Any]:
    """The table value of one :class:`app.repository.Envelope`."""
    return {
        "last_seq": envelope.last_seq,
        "last_activity": envelope.updated_at,
        "persona_id": envelope.persona_id,
        "metadata": envelope.metadata,
    }
