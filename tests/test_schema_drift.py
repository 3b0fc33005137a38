"""The schema drift check: current schemas against the released version, and edits it must (not) flag."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app import schemas
from tools.schema_drift import (
    RELEASED_DIR,
    SCHEMA_DIR,
    drift,
    empirical_drift,
    incompatibilities,
    newest_release,
    samples,
    structural_drift,
)

ROOT = Path(__file__).resolve().parent.parent
Edit = Callable[[dict[str, Any]], None]


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the newest release (under ``released/``) and of the current schemas, free to edit."""
    released = tmp_path / "released" / newest_release(RELEASED_DIR).name
    current = tmp_path / "current"
    shutil.copytree(newest_release(RELEASED_DIR), released)
    current.mkdir()
    for path in SCHEMA_DIR.glob("*.schema.json"):
        shutil.copy(path, current / path.name)
    return released, current


def edit(folder: Path, name: str, change: Edit) -> None:
    path = folder / f"{name}.schema.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))


def props(doc: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = doc["properties"]
    return properties


def add_required(doc: dict[str, Any]) -> None:
    props(doc)["channel"] = {"type": "string"}
    doc["required"].append("channel")


def drop_role(doc: dict[str, Any]) -> None:
    props(doc)["role"]["enum"].remove("tool")


def lower_message_max(doc: dict[str, Any]) -> None:
    props(doc)["message"]["maxLength"] = 4096


def close_payload(doc: dict[str, Any]) -> None:
    props(doc)["payload"]["additionalProperties"] = False


def tighten_session_id(doc: dict[str, Any]) -> None:
    doc["$defs"]["session_id"]["pattern"] = "^[A-Za-z][A-Za-z0-9._:-]{0,127}$"


def persona_string_only(doc: dict[str, Any]) -> None:
    props(doc)["persona_id"]["type"] = "string"


def drop_attachments(doc: dict[str, Any]) -> None:
    del props(doc)["attachments"]


def raise_version_minimum(doc: dict[str, Any]) -> None:
    props(doc)["version"]["minimum"] = 2


def change_type_const(doc: dict[str, Any]) -> None:
    props(doc)["type"]["const"] = "tool.call"


def format_stream_id(doc: dict[str, Any]) -> None:
    props(doc)["stream_id"]["format"] = "uuid"


def shorter_metadata_keys(doc: dict[str, Any]) -> None:
    doc["$defs"]["string_map"]["propertyNames"]["maxLength"] = 64


def delta_needs_seq(doc: dict[str, Any]) -> None:
    doc["allOf"][0]["then"]["required"].append("seq")


def if_on_final(doc: dict[str, Any]) -> None:
    doc["allOf"][0]["if"]["properties"]["type"]["const"] = "assistant.final"


def shorter_attachments(doc: dict[str, Any]) -> None:
    props(doc)["attachments"]["items"]["maxLength"] = 512


def payload_one_of(doc: dict[str, Any]) -> None:
    props(doc)["payload"]["oneOf"] = [{"required": ["result"]}, {"required": ["error"]}]


def session_id_not_null(doc: dict[str, Any]) -> None:
    props(doc)["session_id"]["anyOf"].pop(1)


def index_exclusive(doc: dict[str, Any]) -> None:
    props(doc)["index"]["exclusiveMinimum"] = 0


def new_all_of(doc: dict[str, Any]) -> None:
    doc["allOf"] = [{"if": {"required": ["request_id"]}, "then": {"required": ["seq"]}}]


INCOMPATIBLE: list[tuple[str, Edit, list[str]]] = [
    ("conversation_event", add_required, ["conversation_event: #/required: property 'channel' newly required"]),
    ("conversation_event", drop_role, ['conversation_event: #/properties/role/enum: enum lost value "tool"']),
    (
        "message_request",
        lower_message_max,
        ["message_request: #/properties/message/maxLength: maxLength decreased from 65536 to 4096"],
    ),
    (
        "tool_result",
        close_payload,
        ["tool_result: #/properties/payload/additionalProperties: additionalProperties tightened to false"],
    ),
    (
        "conversation_event",
        tighten_session_id,
        [
            "conversation_event: #/properties/session_id -> #/$defs/session_id/pattern: pattern changed from",
            "message_request: #/properties/session_id/anyOf/0 -> conversation_event.schema.json#/$defs/session_id"
            "/pattern: pattern changed from",
            "tool_request: #/properties/session_id -> conversation_event.schema.json#/$defs/session_id/pattern:",
            "tool_result: #/properties/session_id -> conversation_event.schema.json#/$defs/session_id/pattern:",
        ],
    ),
    (
        "conversation_event",
        persona_string_only,
        ["conversation_event: #/properties/persona_id/type: type narrowed from ['null', 'string'] to ['string']"],
    ),
    (
        "conversation_event",
        drop_attachments,
        [
            "conversation_event: #/properties/attachments: property 'attachments' removed while additionalProperties"
            " is false"
        ],
    ),
    ("tool_request", raise_version_minimum, ["tool_request: #/properties/version/minimum: minimum increased"]),
    ("tool_request", change_type_const, ['tool_request: #/properties/type/const: const changed: const value "tool.']),
    ("conversation_event", format_stream_id, ["conversation_event: #/properties/stream_id/format: format added"]),
    (
        "conversation_event",
        shorter_metadata_keys,
        [
            "tool_result: #/properties/metadata -> conversation_event.schema.json#/$defs/string_map/propertyNames"
            "/maxLength: maxLength decreased from 128 to 64"
        ],
    ),
    (
        "conversation_event",
        delta_needs_seq,
        ["conversation_event: #/allOf/0/then/required: property 'seq' newly required"],
    ),
    ("conversation_event", if_on_final, ["conversation_event: #/allOf/0/if: if/then/else added or changed"]),
    (
        "message_request",
        shorter_attachments,
        ["message_request: #/properties/attachments/items/maxLength: maxLength decreased from 2048 to 512"],
    ),
    ("tool_result", payload_one_of, ["tool_result: #/properties/payload/oneOf: oneOf added or changed"]),
    (
        "message_request",
        session_id_not_null,
        ["message_request: #/properties/session_id/anyOf/1: anyOf branch removed"],
    ),
    (
        "conversation_event",
        index_exclusive,
        ["conversation_event: #/properties/index/exclusiveMinimum: exclusiveMinimum 0 is tighter than the released"],
    ),
    ("tool_result", new_all_of, ["tool_result: #/allOf/0/if: if/then/else added or changed"]),
]


@pytest.mark.parametrize(("name", "change", "expected"), INCOMPATIBLE, ids=[c.__name__ for _, c, _ in INCOMPATIBLE])
def test_an_incompatible_edit_is_named(
    folders: tuple[Path, Path], name: str, change: Edit, expected: list[str]
) -> None:
    released, current = folders
    edit(current, name, change)
    findings = structural_drift(released, current)
    for text in expected:
        assert any(f.startswith(text) for f in findings), f"{text!r} not in {findings}"


def test_a_removed_schema_file_is_an_incompatibility(folders: tuple[Path, Path]) -> None:
    released, current = folders
    (current / "dead_letter.schema.json").unlink()
    assert structural_drift(released, current) == ["dead_letter: #: schema file removed (dead_letter.schema.json)"]


def add_optional(doc: dict[str, Any]) -> None:
    props(doc)["channel"] = {"type": "string", "maxLength": 64}


def add_role(doc: dict[str, Any]) -> None:
    props(doc)["role"]["enum"].append("developer")


def raise_message_max(doc: dict[str, Any]) -> None:
    props(doc)["message"]["maxLength"] = 131072


def widen_and_loosen(doc: dict[str, Any]) -> None:
    props(doc)["persona_id"]["type"] = ["string", "null", "integer"]
    props(doc)["version"]["minimum"] = 0
    props(doc)["message"]["description"] = "the text"
    doc["required"].remove("metadata")
    doc["allOf"][0]["then"]["required"] = ["stream_id"]


def widen_tool_result(doc: dict[str, Any]) -> None:
    props(doc)["status"]["enum"].append("cancelled")
    props(doc)["tool_name"].pop("maxLength")


COMPATIBLE: list[tuple[str, Edit]] = [
    ("conversation_event", add_optional),
    ("conversation_event", add_role),
    ("message_request", raise_message_max),
    ("conversation_event", widen_and_loosen),
    ("tool_result", widen_tool_result),
]


@pytest.mark.parametrize(("name", "change"), COMPATIBLE, ids=[c.__name__ for _, c in COMPATIBLE])
def test_a_compatible_edit_passes(folders: tuple[Path, Path], name: str, change: Edit) -> None:
    released, current = folders
    edit(current, name, change)
    assert structural_drift(released, current) == []


def test_compatible_edits_pass_both_nets(folders: tuple[Path, Path]) -> None:
    released, current = folders
    for name, change in COMPATIBLE:
        edit(current, name, change)
    (current / "audit_event.schema.json").write_text(json.dumps({"type": "object"}))  # a new schema is fine
    assert drift(released, current, examples=60) == []


def test_incompatibilities_compares_two_documents(folders: tuple[Path, Path]) -> None:
    released, current = folders
    edit(current, "message_request", lower_message_max)
    old, new = (json.loads((f / "message_request.schema.json").read_text()) for f in (released, current))
    assert incompatibilities(old, new, released, current) == [
        "#/properties/message/maxLength: maxLength decreased from 65536 to 4096"
    ]
    assert incompatibilities(old, old, released, released) == []


def test_the_current_schemas_are_compatible_with_the_newest_release() -> None:
    assert drift(newest_release(RELEASED_DIR), SCHEMA_DIR) == []


def test_every_released_schema_yields_samples_that_the_service_accepts() -> None:
    # the empirical net is only as good as its samples: enough of them, all valid for the running service
    released = newest_release(RELEASED_DIR)
    for path in sorted(released.glob("*.schema.json")):
        name = path.name.removesuffix(".schema.json")
        instances = samples(released, name, examples=40)
        assert len(instances) >= 20, name
        for instance in instances:
            schemas.validate(name, instance)


def test_the_empirical_net_alone_catches_a_tightened_pattern(folders: tuple[Path, Path]) -> None:
    released, current = folders
    edit(current, "conversation_event", tighten_session_id)
    findings = empirical_drift(released, current, names=["conversation_event"])
    assert findings, "session ids starting with a digit were valid and should have been sampled"
    prefix = "conversation_event: $.session_id: sample valid under the released schema is rejected: "
    assert findings[0].startswith(prefix) and "does not match" in findings[0], findings
    assert findings[-1].startswith("conversation_event: $: ") and findings[-1].endswith("more such samples rejected")


def test_the_newest_release_is_the_highest_version(tmp_path: Path) -> None:
    for version in ("v1", "v2", "v10"):
        (tmp_path / version).mkdir()
    (tmp_path / "README.md").write_text("not a version")
    assert newest_release(tmp_path) == tmp_path / "v10"
    assert newest_release(newest_release(RELEASED_DIR)) == newest_release(RELEASED_DIR)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.schema_drift", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_the_command_passes_on_the_current_schemas() -> None:
    result = run_cli()
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"schema drift: OK \(\d+ schemas compared against released v\d+\)\n", result.stdout)


def test_the_command_fails_naming_schema_and_path(folders: tuple[Path, Path]) -> None:
    released, current = folders
    edit(current, "message_request", lower_message_max)
    result = run_cli("--released", str(released.parent), "--current", str(current))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "message_request: #/properties/message/maxLength: maxLength decreased from 65536 to 4096" in lines
    assert lines[-1].startswith("schema drift: ") and lines[-1].endswith(
        f"incompatibilities with released {released.name}"
    )
