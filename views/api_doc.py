"""What the views say about themselves in the OpenAPI document: shared parameters, answers and error lists.

Each API view declares its operations next to its handlers (``openapi``, per HTTP method); views/openapi.py
assembles the document from the views the app has routed, so a route cannot be left out of it.
"""

from __future__ import annotations

from typing import Any

from app.errors import CODES

Operation = dict[str, Any]
# a view's operations, by HTTP method (lower case), or None for a page for people
Operations = dict[str, Operation] | None

# the codes of app.errors.CODES answered over HTTP, by status
ERROR_CODES: dict[str, str] = {
    str(status): ", ".join(code for code, known in CODES.items() if known.status == status and not known.websocket_only)
    for status in sorted({known.status for known in CODES.values() if not known.websocket_only})
}
# answered to any request, before or beside its endpoint (views/server.py, views/http_errors.py): malformed
# HTTP, a method the path does not take, an oversized request head, a defect, every connection busy
ANY_REQUEST = ("400", "405", "431", "500", "503")


def errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {
            "description": f"error; codes: {ERROR_CODES[status]}",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def json_answer(schema: str, description: str) -> dict[str, Any]:
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
TICKET_PARAM = {
    "name": "ticket",
    "in": "query",
    "required": False,
    "description": "a single-use stream ticket (POST /v1/stream-tickets) instead of the Authorization header",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,128}$"},
}
