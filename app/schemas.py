"""JSON Schemas of ``schemas/``: checked and compiled once, validated as draft 2020-12.

Two validators per schema, both draft 2020-12 with formats checked: ``jsonschema_rs`` (compiled, ~1 µs an
event) decides, and ``jsonschema`` (the reference, ~140 µs) is asked only for an instance the first one
refuses, to describe each violation; should the two ever disagree on a refusal, the reference wins.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app import data
from app.errors import EventInvalid

SCHEMA_DIR = data.folder("schemas")
MAX_REPORTED_ERRORS = 10


def _load_all() -> dict[str, dict[str, Any]]:
    schemas: dict[str, dict[str, Any]] = {}
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        if schema.get("$schema") != "https://json-schema.org/draft/2020-12/schema":
            raise ValueError(f"{path.name}: every schema declares JSON Schema draft 2020-12")
        Draft202012Validator.check_schema(schema)
        schemas[path.name.removesuffix(".schema.json")] = schema
    return schemas


SCHEMAS = _load_all()
_REGISTRY: Registry[Any] = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema, default_specification=DRAFT202012)) for schema in SCHEMAS.values()
)


_RS_REGISTRY = jsonschema_rs.Registry([(schema["$id"], schema) for schema in SCHEMAS.values()])


@cache
def fast_validator(name: str) -> jsonschema_rs.Draft202012Validator:
    """The compiled validator that decides whether an instance of schema ``name`` is valid."""
    return jsonschema_rs.Draft202012Validator(SCHEMAS[name], registry=_RS_REGISTRY, validate_formats=True)


@cache
def validator(name: str) -> Draft202012Validator:
    """The compiled validator of schema ``name`` (file ``schemas/<name>.schema.json``)."""
    return Draft202012Validator(SCHEMAS[name], registry=_REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate(name: str, instance: Any) -> None:
    """Raise :class:`EventInvalid` listing where ``instance`` breaks schema ``name``."""
    if fast_validator(name).is_valid(instance):
        return
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        raise EventInvalid(name, [_describe(e) for e in errors[:MAX_REPORTED_ERRORS]])


def _describe(error: Any) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message}"


# compile every validator at import, so a broken schema fails start-up and not the first event
for _name in SCHEMAS:
    validator(_name)
    fast_validator(_name)
