"""Client messages from any entry point (POST, quick action, WebSocket): validated, then published once acked."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from app import events, schemas
from app.auth import Principal
from app.errors import ApiError, EventInvalid
from app.publish import publish
from app.repository import stored_event
from app.topics import CONVERSATION_INBOUND
from views.base import bounded_read, invalid
from views.ownership import owners

if TYPE_CHECKING:
    from app.faust_app import SomaApp

# a retried request with the same Idempotency-Key gets the same event and session ids
IDEMPOTENCY_NAMESPACE = uuid.UUID("2b0a3c9e-51f4-4f0b-8c55-3f6f0f7d2a11")

ACTIONS = {
    "summarize": "Summarize this conversation so far.",
    "next_steps": "List the next steps we agreed on in this conversation, with who does each.",
    "status_report": "Write a short status report of this session: what was asked, what was done, what is open.",
}


class UnknownAction(ApiError):
    code = "unknown_action"


class UnstorableText(ApiError):
    code = "unstorable_text"


def validated(schema: str, body: Any) -> dict[str, Any]:
    try:
        schemas.validate(schema, body)
    except EventInvalid as exc:
        raise invalid(exc) from exc
    if _has_nul(body):
        # valid JSON, but PostgreSQL's jsonb cannot store U+0000: refused here rather than dead-lettered later
        raise UnstorableText("strings must not contain U+0000 (NUL): it cannot be stored")
    result: dict[str, Any] = body
    return result


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def action_message(body: dict[str, Any]) -> dict[str, Any]:
    """The message_request a quick action stands for (seed contract: metadata.source and metadata.action)."""
    action = body["action"]
    if action not in ACTIONS:
        raise UnknownAction(f"Unknown action {action!r}; expected one of {', '.join(sorted(ACTIONS))}")
    metadata = {**(body.get("metadata") or {}), "source": "quick_action", "action": action}
    return {
        "session_id": body.get("session_id"),
        "persona_id": body.get("persona_id"),
        "message": ACTIONS[action],
        "metadata": metadata,
    }


async def accept_message(
    app: SomaApp, request: dict[str, Any], caller: Principal, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Publish a validated ``message_request`` as a ``user.message``; the answer once the broker acked it.

    The caller's claims (tenant, subject, issuer, scope) are merged into the event's metadata over what the
    client sent; a session of another tenant is 404. An Idempotency-Key is the caller's own: the ids it
    yields depend on the tenant and subject too, so two callers' keys never meet.
    """
    event = events.user_message(request)
    claims = caller.metadata()
    if claims:
        event["metadata"] = {**event["metadata"], **claims}
    if idempotency_key is not None:
        scoped = caller.caller() + "\x1e" + idempotency_key if caller.caller() else idempotency_key
        event["event_id"] = str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, "event:" + scoped))
        if not request.get("session_id"):
            event["session_id"] = str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, "session:" + scoped))
    await _claim(caller, event["session_id"], chosen_by_client=bool(request.get("session_id")))
    if idempotency_key is not None:
        # the key's earlier event, if its Redis record expired: unchecked, a reused key could publish an event
        # that the store then drops as a duplicate
        event_id = event["event_id"]
        earlier = await bounded_read(app, f"event {event_id}", lambda pool: stored_event(pool, event_id))
        if earlier is not None:
            return _earlier_answer(earlier, event)
    await publish(app, CONVERSATION_INBOUND, event, "conversation_event")
    return {"session_id": event["session_id"], "event_id": event["event_id"]}


async def _claim(caller: Principal, session_id: str, *, chosen_by_client: bool) -> None:
    """404 for another tenant's session; a session id the server made (a random or key-derived UUID) is new."""
    if caller.tenant is None:
        return
    if chosen_by_client:
        await owners.claim(caller, session_id)
    else:
        owners.remember(session_id, caller.tenant)


# what a client sent, compared between an event stored under a key and a new request with that key
REQUEST_FIELDS = ("session_id", "persona_id", "message", "attachments", "metadata")


def _earlier_answer(earlier: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """A key reused after its record expired: the same request gets its stored event, another one 422.

    Publishing again would be silently dropped by the store (same event id), so it never happens.
    """
    if any(earlier.get(field) != event.get(field) for field in REQUEST_FIELDS):
        raise ApiError(
            "this Idempotency-Key was used with another request (its record has expired; use a new key)",
            code="idempotency_key_reused",
        )
    return {"session_id": earlier["session_id"], "event_id": earlier["event_id"]}
