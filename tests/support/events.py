"""Events as another service would produce them straight to Kafka, and checks on how they were stored."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from typing import Any

from app import events

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def message(session_id: str, text: str, **extra: Any) -> dict[str, Any]:
    event = {
        "event_id": str(uuid.uuid4()),
        "session_id": session_id,
        "role": "user",
        "type": "user.message",
        "message": text,
        "metadata": {},
        "version": 1,
        "occurred_at": events.now_iso(),
    }
    event.update(extra)
    return event


def tool_request(session_id: str, tool_name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "session_id": session_id,
        "tool_name": tool_name,
        "args": args,
        "metadata": {},
    }


def record(event: dict[str, Any], schema: str = "conversation_event") -> Record:
    return event["session_id"].encode(), json.dumps(event).encode(), events.headers(event, schema)


def check_sequenced(rows: list[dict[str, Any]], produced: list[dict[str, Any]]) -> None:
    """Every produced event stored once; each session's seq runs 1..n in the order the events were produced.

    ``produced`` is in partition order per session (one producer, records keyed by session).
    """
    assert len(rows) == len(produced), f"{len(rows)} rows for {len(produced)} events"
    assert len({str(r["event_id"]) for r in rows}) == len(rows), "an event_id is stored twice"
    stored: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in rows:
        stored[row["session_id"]].append((row["seq"], str(row["event_id"])))
    expected: dict[str, list[str]] = defaultdict(list)
    for event in produced:
        expected[event["session_id"]].append(event["event_id"])
    assert stored.keys() == expected.keys()
    for session_id, seqs in stored.items():
        seqs.sort()
        assert [seq for seq, _ in seqs] == list(range(1, len(seqs) + 1)), f"{session_id}: seq has gaps"
        assert [eid for _, eid in seqs] == expected[session_id], f"{session_id}: seq order is not topic order"
