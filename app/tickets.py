"""Stream tickets: short-lived, single-use credentials for the clients that cannot send a header.

A browser's ``EventSource`` cannot send ``Authorization``, nor can its ``WebSocket``. A client holding a token
asks ``POST /v1/stream-tickets`` for a ticket for one session and puts it in the stream's URL
(``?ticket=``). The ticket is a random 256-bit value; Redis keeps only its SHA-256 (a copy of Redis holds
no usable ticket), with the caller and the session, for ``SOMA_STREAM_TICKET_TTL_SECONDS``. Redeeming deletes
it (``GETDEL``): a ticket seen in a log or a proxy's history opens nothing once used. A stream opened by a
ticket ends when the token that bought the ticket expires.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time

import redis.asyncio as aioredis
import redis.exceptions

from app.auth import InvalidToken, Principal
from app.errors import ApiError
from app.settings import AuthSettings


class AuthUnavailable(ApiError):
    """Redis, which holds the tickets, did not answer: a ticket cannot be checked, so it is not accepted."""

    code = "auth_unavailable"
    retry_after = 1


class Tickets:
    def __init__(self, settings: AuthSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.client = client

    def _key(self, ticket: str) -> str:
        return f"{self.settings.redis_prefix}ticket:{hashlib.sha256(ticket.encode()).hexdigest()}"

    async def issue(self, principal: Principal, session_id: str) -> tuple[str, int]:
        """A new ticket for ``session_id`` on behalf of ``principal``, and its lifetime in seconds."""
        ticket = secrets.token_urlsafe(32)
        ttl = self.settings.ticket_ttl_seconds
        if principal.expires_at is not None:
            # a ticket never outlives the token that bought it
            ttl = max(1, min(ttl, int(principal.expires_at - time.time())))
        record = {
            "session_id": session_id,
            "tenant": principal.tenant,
            "subject": principal.subject,
            "issuer": principal.issuer,
            "scope": principal.scope,
            "expires_at": principal.expires_at,
        }
        try:
            await self.client.set(self._key(ticket), json.dumps(record), ex=ttl)
        except redis.exceptions.RedisError as exc:
            raise AuthUnavailable("stream tickets are unavailable (Redis); retry later") from exc
        return ticket, ttl

    async def redeem(self, ticket: str, session_id: str) -> Principal:
        """The principal a ticket was issued to, once; 401 for an unknown, used, expired or foreign ticket."""
        if not 16 <= len(ticket) <= 128:
            raise InvalidToken("the stream ticket is malformed")
        try:
            raw = await self.client.getdel(self._key(ticket))
        except redis.exceptions.RedisError as exc:
            raise AuthUnavailable("stream tickets cannot be checked (Redis); retry later") from exc
        if raw is None:
            raise InvalidToken("the stream ticket is unknown, used or expired")
        record = json.loads(raw)
        if record["session_id"] != session_id:
            raise InvalidToken("the stream ticket was issued for another session")
        return Principal(
            tenant=record["tenant"],
            subject=record["subject"],
            issuer=record["issuer"],
            scope=record["scope"],
            expires_at=record["expires_at"],
            claims={},
        )
