"""Conversation events: built from requests, encoded as JSON bytes, with their Kafka headers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from app import schemas

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
    schemas.validate("conversation_event", event)
    return event


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def headers(event: dict[str, Any], schema: str) -> list[tuple[str, bytes]]:
    """Kafka headers that let a consumer route or inspect a record without parsing its value."""
    return [
        ("content-type", CONTENT_TYPE),
        ("soma-schema", schema.encode()),
        ("soma-event-id", str(event["event_id"]).encode()),
        ("soma-event-type", str(event.get("type", "")).encode()),
        ("soma-version", str(event.get("version", EVENT_VERSION)).encode()),
    ]
