"""``POST /v1/session/message`` and ``/v1/session/action``: 202 once the broker acked the event."""

from __future__ import annotations

from typing import Any, ClassVar

from faust.web import Request, Response

from app import app
from views.api_doc import IDEMPOTENCY_HEADER, Operations, errors, json_answer
from views.base import ApiView, principal, read_json
from views.idempotency import fingerprint, once
from views.intake import accept_message, action_message, validated


async def _answer(view: ApiView, request: Request, message: dict[str, Any], body: Any) -> Response:
    key = request.headers.get("Idempotency-Key")
    caller = principal(request)
    if key is None:
        return view.json(await accept_message(app, message, caller), status=202)

    async def make() -> tuple[int, dict[str, Any]]:
        return 202, await accept_message(app, message, caller, idempotency_key=key)

    status, answer = await once(app, caller, key, fingerprint(request.method, request.url.path, body), make)
    return view.json(answer, status=status)


def _post(summary: str, schema: str) -> Operations:
    """The operation of a POST that enqueues a user message: 202 once the broker acked it."""
    return {
        "post": {
            "summary": summary,
            "parameters": [IDEMPOTENCY_HEADER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
            },
            "responses": {
                "202": json_answer("Accepted", "accepted: the broker has the event"),
                **errors("400", "401", "404", "408", "409", "413", "415", "422", "503"),
            },
        }
    }


@app.page("/v1/session/message")
class SessionMessage(ApiView):
    openapi: ClassVar[Operations] = _post("Post a user message", "message_request")

    async def post(self, request: Request) -> Response:
        body = await read_json(request, app.settings.http_body_timeout_seconds)
        return await _answer(self, request, validated("message_request", body), body)


@app.page("/v1/session/action")
class SessionAction(ApiView):
    openapi: ClassVar[Operations] = _post(
        "Post a quick action (summarize, next_steps, status_report)", "action_request"
    )

    async def post(self, request: Request) -> Response:
        body = await read_json(request, app.settings.http_body_timeout_seconds)
        return await _answer(self, request, action_message(validated("action_request", body)), body)
