"""Tenant isolation: a session belongs to the tenant that claimed it first, and is invisible to every other.

The owner is kept in PostgreSQL (``session_envelopes.tenant``), set once by the first claim (a POST, a stream
or a stream ticket) or the first stored event carrying a tenant, and never changed. Since it never changes,
each worker remembers the owners it has read (at most ``REMEMBERED`` sessions): a POST to a session this worker
has seen costs no round trip. Another tenant's session answers 404 ``session_not_found``, exactly like a
session that does not exist, so a session id reveals nothing.

With authentication off there is no tenant, and nothing is checked.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from app import app
from app.auth import Principal
from app.errors import ApiError
from app.repository import claim_session
from views.base import bounded_read

if TYPE_CHECKING:
    from app.faust_app import SomaApp

REMEMBERED = 100_000


class SessionNotFound(ApiError):
    code = "session_not_found"


class Owners:
    """The sessions' tenants this worker has read, and the check every session endpoint makes."""

    def __init__(self, app: SomaApp) -> None:
        self.app = app
        self._known: OrderedDict[str, str] = OrderedDict()

    async def claim(self, principal: Principal, session_id: str) -> None:
        """Raise 404 unless the session is the caller's (claiming it for the caller's tenant if it had none)."""
        tenant = principal.tenant
        if tenant is None:
            return
        owner = self._known.get(session_id)
        if owner is None:
            owner = await bounded_read(
                self.app, f"owner of {session_id}", lambda pool: claim_session(pool, session_id, tenant)
            )
            self.remember(session_id, owner)
        if owner != tenant:
            raise SessionNotFound(f"no session {session_id}")

    def remember(self, session_id: str, tenant: str) -> None:
        """Note a session's tenant (known without a read: a session id the server made for the caller)."""
        self._known[session_id] = tenant
        if len(self._known) > REMEMBERED:
            self._known.popitem(last=False)

    @staticmethod
    def check(principal: Principal, found: dict[str, Any] | None, session_id: str) -> dict[str, Any]:
        """The envelope ``found`` if it is the caller's; 404 if there is none or it is another tenant's."""
        if found is None or (principal.tenant is not None and found.get("tenant") != principal.tenant):
            raise SessionNotFound(f"no session {session_id}")
        return found


owners = Owners(app)
