"""``reply_runs``: which replies were started, and which finished, so that a user message gets one final reply.

Key: the user message's event_id; value ``{"attempt": n, "stream_id": ..., "finished": bool}``, written to the
table (its changelog acked by the broker) *before* the model is called and again once the final is acked, in
the changelog partition of the message's session. Its one reader is the responder (agents/responder.py), on the
worker that owns that partition: after a crash or a rebalance the new owner recovers the table before it reads
a reply request again. A reply started but not finished was interrupted: the new owner says so on the session
(a ``system.notice`` naming the abandoned ``stream_id``) and starts it again under a new one.

Bounded: a mark expires ``SOMA_REPLY_RUN_TTL_SECONDS`` after it was written (a request read again later than
that, by a replay, finds its stored final in PostgreSQL instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app import app
from tables.partitioning import in_partition_of, session_table

if TYPE_CHECKING:
    from faust.types import EventT

reply_runs = session_table(
    "reply_runs",
    ttl_seconds=app.settings.reply_run_ttl_seconds,
    help="replies started (attempt, stream id) and finished, per user message",
)


def run_of(request_id: str, event: EventT[Any]) -> dict[str, Any] | None:
    """The reply's mark (read with ``event``, its request's record), or None if it was never started."""
    with in_partition_of(event):
        mark: dict[str, Any] | None = reply_runs.get(request_id)
        return mark


async def mark(request_id: str, event: EventT[Any], value: dict[str, Any]) -> None:
    """Write the reply's mark and return once the broker has it."""
    with in_partition_of(event):
        reply_runs[request_id] = value
    await app.producer.buffer.flush()
    await app.producer.flush()
