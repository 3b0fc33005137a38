"""The JSON Schemas: declared and validated as draft 2020-12, examples valid, violations reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from app import events, schemas
from app.errors import EventInvalid

EXAMPLES = Path(schemas.SCHEMA_DIR) / "examples"


def test_every_schema_is_draft_2020_12_and_compiled_as_such() -> None:
    assert set(schemas.SCHEMAS) >= {"conversation_event", "message_request"}
    for name, schema in schemas.SCHEMAS.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert type(schemas.validator(name)) is Draft202012Validator


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    schema = path.name.split(".")[0]
    schemas.validate(schema, json.loads(path.read_text()))


def test_violations_are_listed_with_their_place() -> None:
    event = events.user_message({"message": "hi"})
    with pytest.raises(EventInvalid) as failure:
        schemas.validate("conversation_event", {**event, "event_id": "nope", "role": "robot", "extra": 1})
    errors = failure.value.errors
    assert any(e.startswith("event_id: 'nope' is not a 'uuid'") for e in errors)
    assert any(e.startswith("role: 'robot' is not one of") for e in errors)
    assert any("'extra' was unexpected" in e for e in errors)


def test_formats_are_checked() -> None:
    event = events.user_message({"message": "hi"})
    with pytest.raises(EventInvalid, match="occurred_at"):
        schemas.validate("conversation_event", {**event, "occurred_at": "yesterday"})


def test_an_assistant_delta_needs_its_stream_and_index() -> None:
    event = {**events.user_message({"message": "frag"}), "role": "assistant", "type": "assistant.delta"}
    with pytest.raises(EventInvalid, match="stream_id"):
        schemas.validate("conversation_event", event)
    schemas.validate("conversation_event", {**event, "stream_id": "r1", "index": 0})


def test_the_request_schema_reuses_the_event_definitions() -> None:
    with pytest.raises(EventInvalid, match="session_id"):
        schemas.validate("message_request", {"message": "hi", "session_id": "x" * 200})
    schemas.validate("message_request", {"message": "hi", "session_id": None, "metadata": {"a": "b"}})
