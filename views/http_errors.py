"""aiohttp's own HTTP errors (unknown path, wrong method, body too large) in the service's JSON error envelope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from app.errors import error_body, status_of

# aiohttp's own refusals, by status; any other is a defect of ours (its 500 is answered by views/server.py)
CODES = {status_of(code): code for code in ("malformed_http", "not_found", "method_not_allowed", "payload_too_large")}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer ``{"error": {"code", "message"}}`` where aiohttp's router would answer plain text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        code = CODES.get(exc.status)
        if code is None:
            raise
        return web.json_response(error_body(code, exc.reason), status=exc.status, headers=headers)


def install(web_app: web.Application) -> None:
    web_app.middlewares.append(json_errors)
