"""Who is calling: a bearer token (JWT, RFC 8725) verified against one key family, and the principal it names.

One verifier per deployment, of one key family: a shared secret (HS256/384/512), or public keys (RS*, PS*,
ES*, EdDSA) from a PEM or a JWKS URL. Never HS and RS/ES in one allow-list: a verifier holding an RSA public
key would otherwise accept an HS256 token signed with that public key as the secret.

JWKS keys are fetched with the worker's aiohttp client (never a blocking one on the event loop), cached for
``SOMA_JWKS_CACHE_SECONDS``, and fetched again for an unknown ``kid`` at most once per
``SOMA_JWKS_MIN_REFETCH_SECONDS``; a fetch waits at most ``SOMA_JWKS_TIMEOUT_SECONDS``. A token is refused
(401) when it does not verify for any reason, including keys that cannot be fetched: authentication never
fails open.

Verified tokens are remembered until they expire (at most ``VERIFIED_MAX`` of them), so a client sending the
same token with every request pays for one signature check.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization

from app.errors import ApiError
from app.settings import AuthSettings

log = logging.getLogger(__name__)

# a kid is looked up, logged and compared, never used as a path: anything else is refused unread
KID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
VERIFIED_MAX = 10_000
CLAIMS = ("tenant", "subject", "issuer", "scope")


class Unauthenticated(ApiError):
    """No credentials were sent (401, ``WWW-Authenticate: Bearer``)."""

    code = "unauthenticated"


class InvalidToken(ApiError):
    """A token was sent and refused: its reason is in the message, the token itself never is."""

    code = "invalid_token"


@dataclass(frozen=True)
class Principal:
    """The verified caller. With authentication off, :data:`ANONYMOUS` (no tenant: no isolation)."""

    tenant: str | None
    subject: str | None
    issuer: str | None
    scope: str | None
    expires_at: float | None  # unix seconds (the token's exp)
    claims: dict[str, Any]

    def metadata(self) -> dict[str, str]:
        """The claims merged into an event's metadata; they win over what the client sent."""
        values = {"tenant": self.tenant, "subject": self.subject, "issuer": self.issuer, "scope": self.scope}
        return {name: value for name, value in values.items() if value is not None}

    def policy_claims(self) -> dict[str, Any]:
        """The claims OPA sees: the token's, with the tenant as the service resolved it (``tenant``)."""
        if self.claims:
            return {**self.claims, "tenant": self.tenant}
        named = {"tenant": self.tenant, "sub": self.subject, "iss": self.issuer, "scope": self.scope}
        return {name: value for name, value in named.items() if value is not None}

    def caller(self) -> str:
        """Who owns idempotency keys: tenant and subject (empty with authentication off)."""
        if self.tenant is None and self.subject is None:
            return ""
        return f"{self.tenant or ''}\x1f{self.subject or ''}"


ANONYMOUS = Principal(None, None, None, None, None, {})


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("the Authorization header is not 'Bearer <token>'")
    return token.strip()


class Authenticator:
    """Verifies tokens for one worker; built once, used by every request and stream."""

    def __init__(self, settings: AuthSettings, http: Callable[[], aiohttp.ClientSession]) -> None:
        self.settings = settings
        self.algorithms = list(settings.algorithms)
        self._http = http
        self._secret: str | None = settings.jwt_secret or None
        self._public_key: Any = None
        if settings.jwt_public_key:
            # parsed once (pyjwt would parse the PEM for every token)
            self._public_key = serialization.load_pem_public_key(settings.jwt_public_key.encode())
        self._jwks: dict[str, jwt.PyJWK] = {}
        self._jwks_fetched_at = float("-inf")
        self._jwks_lock = asyncio.Lock()
        self._verified: OrderedDict[str, Principal] = OrderedDict()
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self.settings.required

    async def principal(self, token: str | None) -> Principal:
        """The principal of ``token``; ANONYMOUS when authentication is off; raises a 401 ApiError."""
        if not self.settings.required:
            return ANONYMOUS
        if token is None:
            self.refused += 1
            raise Unauthenticated("this endpoint needs a bearer token (Authorization: Bearer <JWT>)")
        known = self._verified.get(token)
        if known is not None and (known.expires_at or 0) > time.time():
            return known
        try:
            found = await self._verify(token)
        except InvalidToken:
            self.refused += 1
            raise
        self._remember(token, found)
        return found

    async def _verify(self, token: str) -> Principal:
        settings = self.settings
        if len(token) > settings.max_token_bytes:
            raise InvalidToken(f"the token exceeds {settings.max_token_bytes} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is malformed: {_reason(exc)}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken(f"the token's algorithm is not one of {', '.join(self.algorithms)}")
        key = await self._key(header)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=settings.audience or None,
                issuer=settings.issuer or None,
                leeway=settings.leeway_seconds,
                options={"require": ["exp"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token was refused: {_reason(exc)}") from None
        return self._principal(claims)

    async def _key(self, header: dict[str, Any]) -> Any:
        if self._secret is not None:
            return self._secret
        if self._public_key is not None:
            return self._public_key
        kid = header.get("kid")
        if not isinstance(kid, str) or not KID.fullmatch(kid):
            raise InvalidToken("the token has no usable kid (JWKS keys are chosen by kid)")
        found = self._jwks.get(kid)
        if found is not None and time.monotonic() - self._jwks_fetched_at < self.settings.jwks_cache_seconds:
            return found.key
        await self._refresh(kid)
        found = self._jwks.get(kid)
        if found is None:
            raise InvalidToken("the token's kid is not among the issuer's keys")
        return found.key

    async def _refresh(self, kid: str) -> None:
        """Fetch the JWKS again: when it is stale, or for an unknown kid at a bounded rate (one fetch at a time)."""
        async with self._jwks_lock:
            age = time.monotonic() - self._jwks_fetched_at
            if kid in self._jwks and age < self.settings.jwks_cache_seconds:
                return  # another request fetched it meanwhile
            if age < self.settings.jwks_min_refetch_seconds and kid not in self._jwks:
                return  # fetched just now: an unknown kid does not make us hammer the issuer
            try:
                async with asyncio.timeout(self.settings.jwks_timeout_seconds):
                    async with self._http().get(self.settings.jwks_url) as response:
                        response.raise_for_status()
                        document = await response.json(content_type=None)
                keys = jwt.PyJWKSet.from_dict(document).keys
            except (TimeoutError, aiohttp.ClientError, jwt.PyJWTError, ValueError, TypeError) as exc:
                # keys still cached keep working; the refusal says why without naming the token
                log.warning("JWKS %s could not be fetched: %r", self.settings.jwks_url, exc)
                if kid in self._jwks:
                    return
                raise InvalidToken("the issuer's signing keys could not be fetched") from None
            usable = {k.key_id: k for k in keys if k.key_id and k.algorithm_name in self.algorithms}
            if not usable:
                usable = {k.key_id: k for k in keys if k.key_id}
            self._jwks = usable
            self._jwks_fetched_at = time.monotonic()

    def _principal(self, claims: dict[str, Any]) -> Principal:
        tenant = next(
            (str(claims[name]) for name in self.settings.tenant_claims if isinstance(claims.get(name), str | int)),
            None,
        )
        if not tenant:
            names = ", ".join(self.settings.tenant_claims)
            raise InvalidToken(f"the token names no tenant (claims looked at: {names})")
        scope = claims.get("scope", claims.get("scp"))
        if isinstance(scope, list):
            scope = " ".join(str(s) for s in scope)
        subject = claims.get("sub")
        issuer = claims.get("iss")
        exp = claims.get("exp")
        return Principal(
            tenant=tenant,
            subject=str(subject) if subject is not None else None,
            issuer=str(issuer) if issuer is not None else None,
            scope=str(scope) if scope is not None else None,
            expires_at=float(exp) if isinstance(exp, int | float) else None,
            claims=claims,
        )

    def _remember(self, token: str, principal: Principal) -> None:
        self._verified[token] = principal
        if len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)


def _reason(exc: jwt.PyJWTError) -> str:
    """pyjwt's reason, which names claims and never the token."""
    return str(exc) or type(exc).__name__
