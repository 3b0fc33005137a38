"""Who sent a request: a bearer token; for a stream also a ticket (``?ticket=``) or, for SSE, the auth cookie."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.auth import ANONYMOUS, Principal, bearer

if TYPE_CHECKING:
    from app.faust_app import SomaApp


async def authenticate(app: SomaApp, request: Any, *, stream: bool) -> Principal:
    """The caller; raises 401 (unauthenticated, invalid_token) or 503 (auth_unavailable) when authentication is on."""
    auth = app.auth
    if not auth.enabled:
        return ANONYMOUS
    token = bearer(request.headers.get("Authorization"))
    if token is None and stream:
        ticket = request.query.get("ticket")
        if ticket:
            return await app.tickets.redeem(ticket, request.match_info.get("session_id", ""))
        if request.headers.get("Upgrade", "").lower() != "websocket":
            # SSE only: a cookie sent with a WebSocket handshake could come from any site's page
            token = request.cookies.get(auth.settings.cookie) or None
    return await auth.principal(token)
