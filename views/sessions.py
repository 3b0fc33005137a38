"""Session reads: the envelope, the stored events (JSON pages or an SSE stream), and the WebSocket stream."""

from __future__ import annotations

from typing import Any, cast

from aiohttp import web
from faust.web import Request, Response
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from agents.boundary import retry_transient
from app import app
from app.errors import ApiError
from app.repository import envelope, events_after
from views import connections, http_errors, sse, websocket
from views.base import ApiView
from views.params import integer, resume_position
from views.params import session_id as checked_session_id

MAX_PAGE = 1_000


class SessionNotFound(ApiError):
    status = 404
    code = "session_not_found"


async def _envelope(sid: str) -> dict[str, Any]:
    pool = await app.resources.postgres()
    found = await retry_transient(f"envelope {sid}", lambda: envelope(pool, sid))
    if found is None:
        raise SessionNotFound(f"no session {sid}")
    return found


def wants_event_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


@app.page("/v1/session/{session_id}")
class SessionEnvelope(ApiView):
    async def get(self, request: Request, session_id: str) -> Response:
        return self.json(await _envelope(checked_session_id(session_id)))


@app.page("/v1/session/{session_id}/events")
class SessionEvents(ApiView):
    async def get(self, request: Request, session_id: str) -> Any:
        sid = checked_session_id(session_id)
        if wants_event_stream(request):
            return await sse.serve(
                app, cast(web.Request, request), sid, resume_position(request.query, request.headers)
            )
        after = integer(request.query, "after", 0, 0, 2**62)
        limit = integer(request.query, "limit", 100, 1, MAX_PAGE)
        found = await _envelope(sid)
        pool = await app.resources.postgres()
        page = await retry_transient(f"events {sid}", lambda: events_after(pool, sid, after, limit))
        return self.json(
            {
                "session_id": sid,
                "after": after,
                "events": page,
                "next_after": page[-1]["seq"] if page else after,
                "head_seq": found["last_seq"],
            }
        )


@app.page("/v1/session/{session_id}/stream")
class SessionSocket(ApiView):
    async def get(self, request: Request, session_id: str) -> Any:
        sid = checked_session_id(session_id)
        after = integer(request.query, "after", 0, 0, 2**62)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise ApiError(
                "this endpoint speaks WebSocket; send an Upgrade request", code="upgrade_required", status=426
            )
        return await websocket.serve(app, cast(web.Request, request), sid, after)


connections.install(cast(AiohttpWeb, app.web).web_app)
http_errors.install(cast(AiohttpWeb, app.web).web_app)
