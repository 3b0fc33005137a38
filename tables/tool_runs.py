"""``tool_runs``: which tool requests were started, so that a tool never runs twice for one request id.

Key: the request's event_id; value ``{"started_at": <unix seconds>}``, written to the table (its changelog
acked by the broker) *before* the tool runs, in the changelog partition of the request's session. Its one
reader is the tool executor (agents/tool_requests.py), on the worker that owns that partition: after a crash
or a rebalance the new owner recovers the table (Redis, then the changelog after Redis's offset) before it
reads a request again, so it sees every mark made before the crash. A request marked but without a stored
result was interrupted: it is answered ``interrupted`` rather than run again (at most once; its real result,
if it was published before the crash, comes first on the topic and the store keeps that one).

Bounded: a mark expires ``SOMA_TOOL_RUN_TTL_SECONDS`` after it was written (a request read again later than
that, by a replay of the topic, finds its stored result in PostgreSQL instead).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from app import app
from tables.partitioning import in_partition_of, session_table

if TYPE_CHECKING:
    from faust.types import EventT

tool_runs = session_table(
    "tool_runs",
    ttl_seconds=app.settings.tool_run_ttl_seconds,
    help="tool requests whose tool was started (at most once per request id)",
)


def started(request_id: str, event: EventT[Any]) -> bool:
    """Whether the request (read from ``event``) was marked started."""
    with in_partition_of(event):
        return tool_runs.get(request_id) is not None


async def mark_started(marks: list[tuple[str, EventT[Any]]]) -> None:
    """Mark each (request id, its record) started, and return once the broker has the marks."""
    now = time.time()
    for request_id, event in marks:
        with in_partition_of(event):
            tool_runs[request_id] = {"started_at": now}
    await app.producer.buffer.flush()
    await app.producer.flush()
