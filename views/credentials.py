"""Who sent a request: a bearer token; for a stream also a ticket (``?ticket=``) or, for SSE, the auth cookie."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from app.auth import ANONYMOUS, Principal, bearer
from views.params import InvalidParameter

TICKET = re.compile(r"[A-Za-z0-9_-]{16,128}")

if TYPE_CHECKING:
    from app.faust_app import SomaApp


async def authenticate(app: SomaApp, request: Any, *, stream: bool) -> Principal:
    """The caller; raises 401 (unauthenticated, invalid_token) or 503 (auth_unavailable) when authentication is on."""
    auth = app.auth
    if not auth.enabled:
        return ANONYMOUS
    token = bearer(request.headers.get("Authorization"))
    ticket = request.query.get("ticket") if stream else None
    if ticket is not None and not TICKET.fullmatch(ticket):
        # checked even beside a header: a parameter the document constrains is never accepted unchecked
        raise InvalidParameter("ticket must be 16-128 characters of A-Z a-z 0-9 - _ (from POST /v1/stream-tickets)")
    if token is None and stream:
        if ticket:
            return await app.tickets.redeem(ticket, request.match_info.get("session_id", ""))
        if request.headers.get("Upgrade", "").lower() != "websocket":
            # SSE only: a cookie sent with a WebSocket handshake could come from any site's page
            token = request.cookies.get(auth.settings.cookie) or None
    return await auth.principal(token)
