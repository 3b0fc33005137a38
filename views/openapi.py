"""``GET /openapi.json``: the OpenAPI 3.1 document of the HTTP API, assembled from the routed views.

Paths and operations come from the views the app routes (each declares ``openapi`` beside its handlers,
views/api_doc.py has what they share); request and response bodies from ``schemas/``.
tests/test_error_codes.py checks that every routed view documents exactly the methods it serves.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any, ClassVar

from faust.web import Request, Response

from app import app, schemas
from views.api_doc import ANY_REQUEST, Operation, Operations, errors
from views.base import ApiView

_REF = re.compile(r"^([a-z_]+)\.schema\.json#(.*)$")


def _component(name: str) -> dict[str, Any]:
    """A schema of ``schemas/`` as a component: cross-file ``$ref``s pointed into the document."""
    schema = copy.deepcopy(schemas.SCHEMAS[name])
    schema.pop("$id", None)  # an $id would make "#/components/..." resolve against the schema's own URI
    schema.pop("$schema", None)

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                found = _REF.match(ref)
                if found:
                    node["$ref"] = f"#/components/schemas/{found[1]}{found[2]}"
                elif ref.startswith("#/"):
                    node["$ref"] = f"#/components/schemas/{name}{ref[1:]}"
            for value in node.values():
                rewrite(value)
        elif isinstance(node, list):
            for value in node:
                rewrite(value)
        return node

    result: dict[str, Any] = rewrite(schema)
    return result


def paths() -> dict[str, dict[str, Operation]]:
    """Every routed API view's operations, by path (views that are pages for people declare ``openapi = None``)."""
    found: dict[str, dict[str, Operation]] = {}
    for path, view in app.web.views.items():
        operations = getattr(view, "openapi", None)
        if operations is not None:
            found[path] = copy.deepcopy(operations)
            if not getattr(view, "public", False):
                for operation in found[path].values():
                    # every API view authenticates its caller (views/base.py) when authentication is on,
                    # applies the rate limits when they are set, and asks the policy when OPA is on
                    operation["security"] = [{"bearer": []}]
                    operation["responses"].update(errors("401", "403", "429"))
    return found


def document() -> dict[str, Any]:
    doc = _document()
    for operations in doc["paths"].values():
        for operation in operations.values():
            for status, answer in errors(*ANY_REQUEST).items():
                operation["responses"].setdefault(status, answer)
    return doc


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "SomaAgent 01 event backbone", "version": "1"},
        "paths": paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "required when SOMA_AUTH_REQUIRED is on; streams also take ?ticket= "
                    "(POST /v1/stream-tickets) and SSE the auth cookie",
                }
            },
            "schemas": {
                **{name: _component(name) for name in schemas.SCHEMAS},
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
                "TicketRequest": {
                    "type": "object",
                    "required": ["session_id"],
                    "properties": {"session_id": {"$ref": "#/components/schemas/conversation_event/$defs/session_id"}},
                },
                "Ticket": {
                    "type": "object",
                    "required": ["ticket", "session_id", "expires_in"],
                    "additionalProperties": False,
                    "properties": {
                        "ticket": {"type": "string"},
                        "session_id": {"type": "string"},
                        "expires_in": {"type": "integer", "minimum": 1},
                    },
                },
                "Accepted": {
                    "type": "object",
                    "required": ["session_id", "event_id"],
                    "additionalProperties": False,
                    "properties": {"session_id": {"type": "string"}, "event_id": {"type": "string", "format": "uuid"}},
                },
                "VoiceAccepted": {
                    "type": "object",
                    "required": ["session_id", "event_id", "transcript"],
                    "additionalProperties": False,
                    "properties": {
                        "session_id": {"type": "string"},
                        "event_id": {"type": "string", "format": "uuid"},
                        "transcript": {"type": "string", "minLength": 1},
                    },
                },
                "Envelope": {
                    "type": "object",
                    "required": ["session_id", "last_seq", "metadata"],
                    "properties": {
                        "session_id": {"type": "string"},
                        "persona_id": {"type": ["string", "null"]},
                        "tenant": {"type": ["string", "null"]},
                        "subject": {"type": ["string", "null"]},
                        "issuer": {"type": ["string", "null"]},
                        "scope": {"type": ["string", "null"]},
                        "metadata": {"type": "object"},
                        "analysis": {"type": "object"},
                        "last_seq": {"type": "integer", "minimum": 0},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "stale": {
                            "type": "boolean",
                            "description": "present (true) when PostgreSQL did not answer and the envelope comes "
                            "from the session table: as of its updated_at, last_seq a lower bound of the head",
                        },
                    },
                },
                "EventPage": {
                    "type": "object",
                    "required": ["session_id", "after", "events", "next_after", "head_seq"],
                    "properties": {
                        "session_id": {"type": "string"},
                        "after": {"type": "integer"},
                        "events": {"type": "array", "items": {"type": "object", "required": ["seq"]}},
                        "next_after": {"type": "integer"},
                        "head_seq": {"type": "integer"},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "components"],
                    "properties": {
                        "status": {"enum": ["ok", "degraded", "down"]},
                        "components": {"type": "object"},
                        "failing": {"type": "array", "items": {"type": "string"}},
                        "impaired": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "optional components down (the model server): replies wait, the rest works",
                        },
                    },
                },
            },
        },
    }


_document_bytes: bytes | None = None


@app.page("/openapi.json")
class OpenApi(ApiView):
    public = True
    openapi: ClassVar[Operations] = {
        "get": {
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }

    async def get(self, request: Request) -> Response:
        global _document_bytes
        if _document_bytes is None:  # built on first use: every view is routed by then
            _document_bytes = json.dumps(document(), separators=(",", ":")).encode()
        return self.bytes(_document_bytes, content_type="application/json")
