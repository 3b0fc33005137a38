"""aiohttp's own HTTP errors (unknown path, wrong method, body too large) in the service's JSON error envelope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}

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
        body = {"error": {"code": CODES.get(exc.status, "http_error"), "message": exc.reason}}
        return web.json_response(body, status=exc.status, headers=headers)


def install(web_app: web.Application) -> None:
    web_app.middlewares.append(json_errors)
