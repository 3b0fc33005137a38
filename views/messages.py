"""``POST /v1/session/message``: validate, publish to ``conversation.inbound``, answer once the broker acked."""

from __future__ import annotations

from faust.web import Request, Response

from app import app, events, schemas
from app.errors import EventInvalid
from app.publish import publish
from app.topics import CONVERSATION_INBOUND
from views.base import ApiView, invalid, read_json


@app.page("/v1/session/message")
class SessionMessage(ApiView):
    async def post(self, request: Request) -> Response:
        body = await read_json(request)
        try:
            schemas.validate("message_request", body)
        except EventInvalid as exc:
            raise invalid(exc) from exc
        event = events.user_message(body)
        await publish(app, CONVERSATION_INBOUND, event, "conversation_event")
        return self.json({"session_id": event["session_id"], "event_id": event["event_id"]}, status=202)
