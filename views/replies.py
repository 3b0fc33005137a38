"""``POST /v1/session/{session_id}/stop``: stop the session's running reply (agents/responder.py, app/stops.py)."""

from __future__ import annotations

from typing import ClassVar

import redis.exceptions
from faust.web import Request, Response

from app import app, stops
from app.errors import ApiError
from views.api_doc import SESSION_PARAM, Operations, errors
from views.base import ApiView, principal
from views.ownership import owners
from views.params import session_id as checked_session_id


class RepliesOff(ApiError):
    """The worker has no responder (SOMA_SLM_URL unset): there is no reply to stop."""

    code = "replies_off"


class StopUnavailable(ApiError):
    code = "stop_unavailable"
    retry_after = 1


async def stop(session_id: str) -> float:
    """Ask the session's running reply to stop; the time asked."""
    if not app.settings.slm_url:
        raise RepliesOff("this service does not reply to messages (SOMA_SLM_URL is not set)")
    try:
        return await stops.request_stop(app.resources.redis, app.settings.redis_prefix, session_id)
    except (redis.exceptions.RedisError, OSError) as exc:
        raise StopUnavailable("the stop could not be recorded (Redis unavailable); retry") from exc


@app.page("/v1/session/{session_id}/stop")
class StopReply(ApiView):
    openapi: ClassVar[Operations] = {
        "post": {
            "summary": "Stop the session's running reply: its final says stopped, with the text written so far",
            "parameters": [SESSION_PARAM],
            "responses": {
                "202": {
                    "description": "asked: the reply that was running ends within a fraction of a second",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["session_id", "stop_requested_at"],
                                "properties": {
                                    "session_id": {"type": "string"},
                                    "stop_requested_at": {"type": "number"},
                                },
                            }
                        }
                    },
                },
                **errors("400", "404", "409", "503"),
            },
        }
    }

    async def post(self, request: Request, session_id: str) -> Response:
        sid = checked_session_id(session_id)
        await owners.claim(principal(request), sid)
        asked = await stop(sid)
        return self.json({"session_id": sid, "stop_requested_at": asked}, status=202)
