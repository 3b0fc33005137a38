"""The base of every API view: JSON errors with stable codes, JSON bodies read within their limits."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import aiopg
from aiohttp import web
from faust.web import Request, Response, View

from agents.boundary import retry_transient
from app import events, policy, tracing
from app.auth import ANONYMOUS, Principal
from app.errors import (
    ApiError,
    BodyTimeout,
    EventInvalid,
    InvalidRequest,
    MalformedRequest,
    PayloadTooLarge,
    StorageUnavailable,
    UnsupportedMediaType,
)
from app.rate_limit import RateLimited, RateLimiter, Verdict
from views import credentials

if TYPE_CHECKING:
    from app.faust_app import SomaApp

log = logging.getLogger(__name__)
T = TypeVar("T")
PRINCIPAL = "soma.principal"  # the request's key of its caller


class ApiView(View):
    """Turns ApiError into ``{"error": {"code", "message"}}`` with its status; never a 5xx for bad input.

    Each view declares ``openapi``: its operations per HTTP method, as the OpenAPI document lists them
    (views/openapi.py assembles the document from the routed views), or None for a page for people.

    Every view authenticates its caller (views/credentials.py) before its handler runs, unless it is
    ``public`` (health, the OpenAPI document, the console's files); a stream view also takes a stream ticket
    or the auth cookie. The handler finds the caller with :func:`principal`.
    """

    openapi: ClassVar[dict[str, dict[str, Any]] | None]  # views/api_doc.Operations
    public: ClassVar[bool] = False
    stream: ClassVar[bool] = False  # a ticket (?ticket=) or the auth cookie is accepted too

    async def dispatch(self, request: Any) -> Any:
        if tracing.enabled and not (self.public or self.stream):
            # a span per API request (health, metrics, pages and long-lived streams have none)
            route = request.match_info.route.resource
            with tracing.server_span(
                request.method,
                route.canonical if route is not None else "unmatched",
                request.path,
                request.headers,
                request.remote,
            ) as span:
                response = await self._answer(request)
                tracing.answered(span, response.status)
                return response
        return await self._answer(request)

    async def _answer(self, request: Any) -> Any:
        began = time.perf_counter()
        verdict: Verdict | None = None
        try:
            if not self.public:
                verdict = await self._admit(request)
            response = await super().dispatch(request)
        except ApiError as exc:
            response = self.error_response(exc)
        except web.HTTPRequestEntityTooLarge as exc:
            response = self.error_response(PayloadTooLarge(f"request body exceeds {exc.text or 'the limit'}"))
        if verdict is not None and isinstance(response, web.Response) and not response.prepared:
            response.headers.update(verdict.headers())
        if isinstance(response, web.StreamResponse):
            route = request.match_info.route.resource
            # a stream's response started long ago (its time is the stream's): counted, not timed
            cast("SomaApp", self.app).metrics.request(
                request.method,
                route.canonical if route is not None else "unmatched",
                response.status,
                None if response.prepared else time.perf_counter() - began,
            )
        return response

    async def _admit(self, request: Any) -> Verdict | None:
        """Authenticate, charge the rate limits, ask the policy: in that order. Returns the limits' verdict."""
        app = cast("SomaApp", self.app)
        limits = app.rate_limits
        try:
            caller = request[PRINCIPAL] = await credentials.authenticate(app, request, stream=self.stream)
        except ApiError as exc:
            if exc.status == 401 and limits.address is not None:
                # a flood of bad tokens is charged to its address (and refused 429 past the limit)
                await limit(limits, None, request.remote)
            raise
        verdict = await limit(limits, caller_key(caller, request.remote), request.remote) if limits.enabled else None
        if app.policy.enabled:
            await self.authorize(app, request, caller)
        return verdict

    async def authorize(self, app: SomaApp, request: Any, caller: Principal) -> None:
        """Ask OPA (``SOMA_OPA_DECISION_PATH``); anything but an allow is 403 ``policy_denied``.

        A POST's JSON body is its input's ``payload`` (read here, within the body timeout; the handler reads
        the same bytes again from aiohttp's buffer).
        """
        payload = None
        if request.method == "POST" and request.body_exists:  # a POST without a body (a stop) has no payload
            payload = await read_json(request, app.settings.http_body_timeout_seconds)
        await self.decide(app, request, caller, payload)

    async def decide(self, app: SomaApp, request: Any, caller: Principal, payload: Any) -> None:
        """The policy's decision on ``request`` with ``payload``; PolicyDenied unless it allows."""
        claims = caller.policy_claims()
        document = policy.request_input(request.method, request.path, request.headers, payload, claims)
        decision = await app.policy.decide(app.settings.opa_decision_path, document)
        if not decision.allowed:
            suffix = f" (decision {decision.decision_id})" if decision.decision_id else ""
            raise policy.PolicyDenied(f"{decision.reason}{suffix}")

    def error_response(self, exc: ApiError, **extra: Any) -> Response:
        body = exc.body()
        body["error"].update(extra)
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        headers.update(exc.headers or {})
        if exc.status == 401:
            # RFC 6750 3: what a client must send; error="invalid_token" when the one it sent was refused
            refused = ', error="invalid_token"' if exc.code == "invalid_token" else ""
            headers["WWW-Authenticate"] = f'Bearer realm="somaagent01"{refused}'
        response = self.json(body, status=exc.status, headers=headers)
        if exc.close_connection:
            cast(web.Response, response).force_close()
        return response


def caller_key(caller: Principal, address: str | None) -> str | None:
    """Whose limit a request counts against: its tenant and subject, or with authentication off its address."""
    return caller.caller() or (f"address {address}" if address else None)


async def limit(limits: RateLimiter, caller: str | None, address: str | None, cost: int = 1) -> Verdict:
    """Charge the request to its limits; 429 ``rate_limited`` with Retry-After and RateLimit headers past one."""
    verdict = await limits.check(caller, address, cost)
    if not verdict.allowed:
        refused = RateLimited(
            f"rate limit reached; retry in {verdict.retry_after_seconds:.1f} s",
            retry_after=max(1, math.ceil(verdict.retry_after_seconds)),
        )
        refused.headers = verdict.headers()
        raise refused
    return verdict


def principal(request: Any) -> Principal:
    """The caller of an authenticated view's request (ANONYMOUS with authentication off)."""
    found: Principal = request.get(PRINCIPAL, ANONYMOUS)
    return found


async def read_json(request: Request, within: float) -> Any:
    """The request's JSON body; 415 for another content type, 400 for bytes that are not JSON.

    A body not complete within ``within`` seconds is 408 ``body_timeout`` (a client sending it a byte at a
    time would otherwise hold its connection and handler forever).
    """
    # required, not assumed: a body without it (sendBeacon, a no-cors fetch) could be posted cross-site
    # without a CORS preflight
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"expected Content-Type: application/json, got {content_type or 'none'}")
    try:
        async with asyncio.timeout(within):
            raw = await request.read()
    except TimeoutError as exc:
        # the rest of the body is not waited for either: aiohttp would otherwise read ("linger") for 10 s more
        # before closing the connection of the client that is too slow already
        cast(web.Request, request).content.feed_eof()
        raise BodyTimeout(f"the request body did not arrive within {within:g} s") from exc
    try:
        return events.decode(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc}") from exc


async def bounded_read(app: SomaApp, what: str, attempt: Callable[[aiopg.Pool], Awaitable[T]]) -> T:
    """A client's read: retried while PostgreSQL is away, for at most ``SOMA_READ_DEADLINE_SECONDS``.

    Then 503 ``storage_unavailable`` with Retry-After: a client waits for an answer, not forever (and faust's
    web driver does not cancel a handler whose client has gone).
    """
    deadline = app.settings.read_deadline_seconds
    try:
        async with asyncio.timeout(deadline):
            pool = await app.resources.postgres()
            return await retry_transient(what, lambda: attempt(pool))
    except TimeoutError as exc:
        raise StorageUnavailable(f"the session store did not answer within {deadline:g} s; retry later") from exc


def invalid(exc: EventInvalid) -> InvalidRequest:
    """A schema violation of the client's body, as a 422 listing each violation."""
    return InvalidRequest("; ".join(exc.errors))
