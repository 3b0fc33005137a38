"""Session reads: the envelope, the stored events (JSON pages or an SSE stream), and the WebSocket stream."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

from aiohttp import web
from faust.web import Request, Response
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from app import app
from app.auth import Principal
from app.errors import ApiError, StorageUnavailable
from app.repository import envelope, events_after, head_seq
from tables.sessions import stored_state
from views import connections, http_errors, sse, websocket
from views.api_doc import AFTER_PARAM, SESSION_PARAM, TICKET_PARAM, Operations, errors, json_answer
from views.base import ApiView, bounded_read, principal
from views.ownership import Owners, owners
from views.params import integer, resume_position
from views.params import session_id as checked_session_id

log = logging.getLogger(__name__)

MAX_PAGE = 1_000


async def _envelope(caller: Principal, sid: str) -> dict[str, Any]:
    """The caller's session's envelope; 404 if there is none or it is another tenant's."""
    found = await bounded_read(app, f"envelope {sid}", lambda pool: envelope(pool, sid))
    return Owners.check(caller, found, sid)


async def _may_stream(caller: Principal, sid: str) -> None:
    """Before a stream is opened (and can no longer answer with a status): the session is the caller's (a new
    one becomes the caller's), and PostgreSQL answers."""
    await owners.claim(caller, sid)
    await bounded_read(app, f"head of {sid}", lambda pool: head_seq(pool, sid))


def _check_origin(request: Request) -> None:
    """Cross-site WebSocket hijacking: a browser page may open a stream only from an allowed origin (or ours).

    Browsers always send Origin with a WebSocket handshake; other clients need not, and are not refused for it.
    """
    origin = request.headers.get("Origin")
    if not origin:
        return
    normal = origin.strip().rstrip("/").lower()
    if normal in app.settings.allowed_origins() or urlsplit(normal).netloc == cast(web.Request, request).host.lower():
        return
    raise ApiError(f"WebSocket streams are not open to pages of {origin[:100]}", code="origin_not_allowed")


def wants_event_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


@app.page("/v1/session/{session_id}")
class SessionEnvelope(ApiView):
    openapi: ClassVar[Operations] = {
        "get": {
            "summary": "The session envelope",
            "parameters": [SESSION_PARAM],
            "responses": {"200": json_answer("Envelope", "the envelope"), **errors("400", "404", "503")},
        }
    }

    async def get(self, request: Request, session_id: str) -> Response:
        """The envelope from PostgreSQL; while it does not answer, the session table's copy, marked ``stale``."""
        sid = checked_session_id(session_id)
        caller = principal(request)
        try:
            return self.json(await _envelope(caller, sid))
        except StorageUnavailable:
            try:
                copy = await stored_state(sid)
            except Exception as exc:  # Redis away too: the answer is PostgreSQL's 503
                log.warning("session table read of %s failed: %r", sid, exc)
                copy = None
            if copy is None:
                raise
            return self.json({**Owners.check(caller, copy, sid), "stale": True})


@app.page("/v1/session/{session_id}/events")
class SessionEvents(ApiView):
    stream = True  # SSE: a stream ticket or the auth cookie authenticates too
    openapi: ClassVar[Operations] = {
        "get": {
            "summary": "Stored events in seq order (JSON pages); with Accept: text/event-stream, SSE",
            "parameters": [
                SESSION_PARAM,
                AFTER_PARAM,
                TICKET_PARAM,
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
                **errors("400", "404", "503"),
            },
        }
    }

    async def get(self, request: Request, session_id: str) -> Any:
        sid = checked_session_id(session_id)
        caller = principal(request)
        if wants_event_stream(request):
            position = resume_position(request.query, request.headers)
            await _may_stream(caller, sid)
            return await sse.serve(app, cast(web.Request, request), sid, position)
        after = integer(request.query, "after", 0, 0, 2**62)
        limit = integer(request.query, "limit", 100, 1, MAX_PAGE)
        found = await _envelope(caller, sid)
        page = await bounded_read(app, f"events {sid}", lambda pool: events_after(pool, sid, after, limit))
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
    stream = True  # a stream ticket authenticates too
    openapi: ClassVar[Operations] = {
        "get": {
            "summary": "WebSocket stream of the session (events, then live; client messages in)",
            "parameters": [SESSION_PARAM, AFTER_PARAM, TICKET_PARAM],
            "responses": {
                "101": {"description": "switching to WebSocket"},
                **errors("400", "404", "426", "503"),
            },
        }
    }

    async def get(self, request: Request, session_id: str) -> Any:
        sid = checked_session_id(session_id)
        after = integer(request.query, "after", 0, 0, 2**62)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise ApiError("this endpoint speaks WebSocket; send an Upgrade request", code="upgrade_required")
        _check_origin(request)
        await _may_stream(principal(request), sid)
        return await websocket.serve(app, cast(web.Request, request), sid, after)


connections.install(cast(AiohttpWeb, app.web).web_app)
http_errors.install(cast(AiohttpWeb, app.web).web_app)
