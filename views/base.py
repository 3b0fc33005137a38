"""The base of every API view: JSON errors with stable codes, JSON bodies read within their limits."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from faust.web import Request, Response, View

from app import events
from app.errors import (
    ApiError,
    EventInvalid,
    InvalidRequest,
    MalformedRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)


class ApiView(View):
    """Turns ApiError into ``{"error": {"code", "message"}}`` with its status; never a 5xx for bad input."""

    async def dispatch(self, request: Any) -> Any:
        try:
            return await super().dispatch(request)
        except ApiError as exc:
            return self.error_response(exc)
        except web.HTTPRequestEntityTooLarge as exc:
            return self.error_response(PayloadTooLarge(f"request body exceeds {exc.text or 'the limit'}"))

    def error_response(self, exc: ApiError, **extra: Any) -> Response:
        body = exc.body()
        body["error"].update(extra)
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return self.json(body, status=exc.status, headers=headers)


async def read_json(request: Request) -> Any:
    """The request's JSON body; 415 for another content type, 400 for bytes that are not JSON."""
    # required, not assumed: a body without it (sendBeacon, a no-cors fetch) could be posted cross-site
    # without a CORS preflight
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"expected Content-Type: application/json, got {content_type or 'none'}")
    raw = await request.read()
    try:
        return events.decode(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc}") from exc


def invalid(exc: EventInvalid) -> InvalidRequest:
    """A schema violation of the client's body, as a 422 listing each violation."""
    return InvalidRequest("; ".join(exc.errors))
