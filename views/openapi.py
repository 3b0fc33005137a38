"""``GET /openapi.json``: the OpenAPI 3.1 document of the HTTP API, its bodies taken from ``schemas/``."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from faust.web import Request, Response

from app import app, schemas
from app.errors import CODES
from views.base import ApiView

# the codes of app.errors.CODES answered over HTTP, by status
ERROR_CODES: dict[str, str] = {
    str(status): ", ".join(code for code, known in CODES.items() if known.status == status and not known.websocket_only)
    for status in sorted({known.status for known in CODES.values() if not known.websocket_only})
}
# answered to any request, before or beside its endpoint (views/server.py, views/http_errors.py): malformed
# HTTP, a method the path does not take, an oversized request head, a defect, every connection busy
ANY_REQUEST = ("400", "405", "431", "500", "503")
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


def _errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {
            "description": f"error; codes: {ERROR_CODES[status]}",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


SESSION_PARAM = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"$ref": "#/components/schemas/conversation_event/$defs/session_id"},
}
AFTER_PARAM = {
    "name": "after",
    "in": "query",
    "required": False,
    "description": "return events with seq > after",
    "schema": {"type": "integer", "minimum": 0, "default": 0},
}
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "a retried request with the same key gets the first answer and enqueues nothing",
    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
}


def document() -> dict[str, Any]:
    doc = _document()
    for operations in doc["paths"].values():
        for operation in operations.values():
            for status, answer in _errors(*ANY_REQUEST).items():
                operation["responses"].setdefault(status, answer)
    return doc


def _document() -> dict[str, Any]:
    post_body = {
        "post": {
            "parameters": [IDEMPOTENCY_HEADER],
            "responses": {
                "202": _json("Accepted", "accepted: the broker has the event"),
                **_errors("400", "408", "409", "413", "415", "422", "503"),
            },
        }
    }
    message = copy.deepcopy(post_body)
    message["post"].update(
        summary="Post a user message",
        requestBody={
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/message_request"}}},
        },
    )
    action = copy.deepcopy(post_body)
    action["post"].update(
        summary="Post a quick action (summarize, next_steps, status_report)",
        requestBody={
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/action_request"}}},
        },
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "SomaAgent 01 event backbone", "version": "1"},
        "paths": {
            "/v1/session/message": message,
            "/v1/session/action": action,
            "/v1/session/{session_id}": {
                "get": {
                    "summary": "The session envelope",
                    "parameters": [SESSION_PARAM],
                    "responses": {"200": _json("Envelope", "the envelope"), **_errors("400", "404", "503")},
                }
            },
            "/v1/session/{session_id}/events": {
                "get": {
                    "summary": "Stored events in seq order (JSON pages); with Accept: text/event-stream, SSE",
                    "parameters": [
                        SESSION_PARAM,
                        AFTER_PARAM,
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "description": "SSE: resume after this seq",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "a page of events, or an SSE stream",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/EventPage"}},
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors("400", "404", "503"),
                    },
                }
            },
            "/v1/session/{session_id}/stream": {
                "get": {
                    "summary": "WebSocket stream of the session (events, then live; client messages in)",
                    "parameters": [SESSION_PARAM, AFTER_PARAM],
                    "responses": {
                        "101": {"description": "switching to WebSocket"},
                        **_errors("400", "426", "503"),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Kafka, Redis and Postgres checked for real",
                    "responses": {
                        "200": _json("Health", "every component answers"),
                        "503": {
                            "description": "a component is down (named in failing); or error too_many_connections",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/Health"},
                                            {"$ref": "#/components/schemas/Error"},
                                        ]
                                    }
                                }
                            },
                        },
                    },
                }
            },
            "/v1/worker": {
                "get": {
                    "summary": "This worker's partitions, streams and watched sessions",
                    "responses": {
                        "200": {
                            "description": "worker state",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
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
                "Accepted": {
                    "type": "object",
                    "required": ["session_id", "event_id"],
                    "additionalProperties": False,
                    "properties": {"session_id": {"type": "string"}, "event_id": {"type": "string", "format": "uuid"}},
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
                    },
                },
            }
        },
    }


DOCUMENT = json.dumps(document(), separators=(",", ":"))


@app.page("/openapi.json")
class OpenApi(ApiView):
    async def get(self, request: Request) -> Response:
        return self.bytes(DOCUMENT.encode(), content_type="application/json")
