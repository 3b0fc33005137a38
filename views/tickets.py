"""``POST /v1/stream-tickets``: a single-use ticket to open one session's stream without a header (app/tickets.py)."""

from __future__ import annotations

from typing import Any, ClassVar

from faust.web import Request, Response

from app import app
from views.api_doc import Operations, errors, json_answer
from views.base import ApiView, principal, read_json
from views.ownership import owners
from views.params import InvalidParameter
from views.params import session_id as checked_session_id


@app.page("/v1/stream-tickets")
class StreamTickets(ApiView):
    openapi: ClassVar[Operations] = {
        "post": {
            "summary": "A single-use ticket for one session's WebSocket or SSE stream (?ticket=)",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TicketRequest"}}},
            },
            "responses": {
                "201": json_answer("Ticket", "the ticket, valid once within expires_in seconds"),
                **errors("400", "404", "408", "413", "415", "503"),
            },
        }
    }

    async def post(self, request: Request) -> Response:
        body: Any = await read_json(request, app.settings.http_body_timeout_seconds)
        if not isinstance(body, dict) or not isinstance(body.get("session_id"), str):
            raise InvalidParameter('expected {"session_id": "<session id>"}')
        sid = checked_session_id(body["session_id"])
        caller = principal(request)
        await owners.claim(caller, sid)
        ticket, ttl = await app.tickets.issue(caller, sid)
        return self.json({"ticket": ticket, "session_id": sid, "expires_in": ttl}, status=201)
