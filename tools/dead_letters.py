"""Reading dead letters back: a ``<topic>.dlq`` record as a ``dead_letter`` document (schemas/)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from app import schemas


def _text(raw: bytes | None) -> tuple[str | None, str]:
    if raw is None:
        return None, "utf-8"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), "base64"


def view(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    dlq_partition: int | None = None,
    dlq_offset: int | None = None,
) -> dict[str, Any]:
    """The dead letter described by a DLQ record's key, value and headers; validated against its schema."""
    found = {name: raw.decode("utf-8", "replace") for name, raw in headers}
    key_text, key_encoding = _text(key)
    value_text, value_encoding = _text(value)
    doc: dict[str, Any] = {
        "source_topic": found["__connect.errors.topic"],
        "source_partition": int(found["__connect.errors.partition"]),
        "source_offset": int(found["__connect.errors.offset"]),
        "key": key_text,
        "key_encoding": key_encoding,
        "value": value_text,
        "value_encoding": value_encoding,
        "original_timestamp": float(found["soma.dlq.original_timestamp"])
        if "soma.dlq.original_timestamp" in found
        else None,
        "error_class": found["__connect.errors.exception.class.name"],
        "error_message": found.get("__connect.errors.exception.message", ""),
        "stacktrace": found.get("__connect.errors.exception.stacktrace", ""),
        "attempts": int(found["soma.dlq.attempts"]),
        "first_failure": float(found["soma.dlq.first_failure"]),
        "last_failure": float(found["soma.dlq.last_failure"]),
    }
    if dlq_partition is not None:
        doc["dlq_partition"] = dlq_partition
    if dlq_offset is not None:
        doc["dlq_offset"] = dlq_offset
    schemas.validate("dead_letter", doc)
    return doc
