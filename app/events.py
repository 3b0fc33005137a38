"""Conversation events: built from requests, encoded as JSON bytes, with their Kafka headers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

EVENT_VERSION = 1
CONTENT_TYPE = b"application/json"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def user_message(request: dict[str, Any]) -> dict[str, Any]:
    """A ``user.message`` conversation event from a validated ``message_request`` body."""
    event = {
        "event_id": str(uuid.uuid4()),
        "session_id": request.get("session_id") or str(uuid.uuid4()),
        "persona_id": request.get("persona_id"),
        "role": "user",
        "type": "user.message",
        "message": request["message"],
        "attachments": list(request.get("attachments") or []),
        "metadata": dict(request.get("metadata") or {}),
        "trace_context": {},
        "version": EVENT_VERSION,
        "occurred_at": now_iso(),
    }
    # validated once, where it is sent (app/publish.py)
    return event


def encode(event: Any) -> bytes:
    """Compact UTF-8 JSON (orjson: ~10x the stdlib's speed; the hot path encodes every event)."""
    return orjson.dumps(event)


def decode(raw: bytes | str) -> Any:
    """Parse JSON text; raises ``json.JSONDecodeError`` (a ValueError) for anything that is not strict JSON.

    orjson refuses what Postgres' jsonb would refuse later (unpaired surrogates, NaN) and what would cost
    the service a stack or a quadratic conversion (nesting deeper than 1,024, integers beyond a double).
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # the standard class, so that dead letters keep naming json.decoder.JSONDecodeError as their cause
        raise json.JSONDecodeError(exc.msg, exc.doc, exc.pos) from None


def headers(event: dict[str, Any], schema: str) -> list[tuple[str, bytes]]:
    """Kafka headers that let a consumer route or inspect a record without parsing its value."""
    return [
        ("content-type", CONTENT_TYPE),
        ("soma-schema", schema.encode()),
        ("soma-event-id", str(event["event_id"]).encode()),
        ("soma-event-type", str(event.get("type", "")).encode()),
        ("soma-version", str(event.get("version", EVENT_VERSION)).encode()),
    ]
