"""``POST /v1/session/message`` and ``/v1/session/action``: 202 once the broker acked the event."""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response

from app import app
from views.base import ApiView, read_json
from views.idempotency import fingerprint, once
from views.intake import accept_message, action_message, validated


async def _answer(view: ApiView, request: Request, message: dict[str, Any], body: Any) -> Response:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return view.json(await accept_message(app, message), status=202)

    async def make() -> tuple[int, dict[str, Any]]:
        return 202, await accept_message(app, message, idempotency_key=key)

    status, answer = await once(app, key, fingerprint(request.method, request.url.path, body), make)
    return view.json(answer, status=status)


@app.page("/v1/session/message")
class SessionMessage(ApiView):
    async def post(self, request: Request) -> Response:
        body = await read_json(request, app.settings.http_body_timeout_seconds)
        return await _answer(self, request, validated("message_request", body), body)


@app.page("/v1/session/action")
class SessionAction(ApiView):
    async def post(self, request: Request) -> Response:
        body = await read_json(request, app.settings.http_body_timeout_seconds)
        return await _answer(self, request, action_message(validated("action_request", body)), body)
