"""The HTTP server under faust's web driver, guarded against slow and abusive clients.

- At most ``SOMA_HTTP_MAX_CONNECTIONS`` connections (capped below the process's descriptor limit): one more
  closes the oldest connection that is idle (no request in progress for 0.25 s or more), or if there is none,
  is answered ``503 too_many_connections`` and closed. The worker never runs out of descriptors, so its health
  and its other clients keep being served.
- A connection must send a complete request head within ``SOMA_HTTP_IDLE_TIMEOUT_SECONDS`` of opening or of
  its previous response, or it is closed (slowloris: headers sent a byte at a time, or nothing at all).
  Bodies are read within ``SOMA_HTTP_BODY_TIMEOUT_SECONDS`` (``views/base.read_json``: 408 ``body_timeout``).
- aiohttp's own answers to malformed HTTP (bad request line, oversized or too many headers) and to a handler
  that crashed are in the service's JSON error envelope, like every other error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from app.errors import error_body, status_of

if TYPE_CHECKING:
    from app.faust_app import SomaApp

log = logging.getLogger(__name__)

# an idle connection is closed for a newcomer only once it has been idle this long (a client that has just
# connected has not had the time to send its request)
EVICTABLE_AFTER_SECONDS = 0.25

# a refused connection's request is read and dropped this long before it is closed
REFUSAL_LINGER_SECONDS = 1.0
REFUSALS_LINGERING = 256

# descriptors kept for everything else of the worker: Kafka, Redis and PostgreSQL connections, files, logs
DESCRIPTOR_RESERVE = 512

REFUSAL_BODY = json.dumps(
    error_body("too_many_connections", "the server has too many connections; retry later")
).encode()
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(REFUSAL_BODY)).encode() + b"\r\n\r\n" + REFUSAL_BODY
)


def connection_limit(wanted: int) -> int:
    """``wanted``, or fewer if the descriptor limit cannot hold it (the soft limit is raised first if it can)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + DESCRIPTOR_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    limit = max(16, soft - DESCRIPTOR_RESERVE)
    log.warning(
        "SOMA_HTTP_MAX_CONNECTIONS=%d does not fit the descriptor limit (%d, hard %d): at most %d connections",
        wanted,
        soft,
        hard,
        limit,
    )
    return limit


class GuardedServer(Server):
    """aiohttp's low-level server with a connection limit; its connections are :class:`GuardedHandler`."""

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.accepted = 0
        self.refused = 0
        self.evicted = 0
        # connections whose client is still there (aiohttp's own list keeps a closed one until its handler ends)
        self.live = 0
        self.lingering = 0  # refused connections being read and dropped before they close

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    def make_room(self) -> bool:
        """Close the oldest connection that is idle (for EVICTABLE_AFTER_SECONDS or more) for a newcomer.

        False when there is none: every other connection is busy or has only just opened or answered. The
        oldest connections come first, so the search usually ends early (it never sorts all of them).
        """
        idle_before = self._loop.time() - EVICTABLE_AFTER_SECONDS
        for handler in self._connections:
            since = _idle_since(handler)
            if since is not None and since <= idle_before:
                self.evicted += 1
                handler.force_close()
                return True
        return False


def _idle_since(handler: RequestHandler) -> float | None:
    """When the connection opened or last answered, if no request is in progress on it (else None).

    Streams and WebSockets are requests in progress. aiohttp sets the keep-alive deadline at both moments.
    """
    if handler._current_request is not None or handler._messages or handler._force_close or handler.transport is None:
        return None
    return handler._next_keepalive_close_time - handler.keepalive_timeout


class GuardedHandler(RequestHandler):
    """One HTTP connection: refused when the server is full, errors answered as JSON."""

    refused = False
    lingering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = cast(GuardedServer, self._manager)
        server.accepted += 1
        server.live += 1
        if server.live > server.max_connections and not server.make_room():
            server.refused += 1
            self.refuse(server)

    def refuse(self, server: GuardedServer) -> None:
        """Answer 503 without reading the request, then close within a second.

        Closing at once with the client's request unread would reset the connection (RST), and the client
        could lose the answer: the request's bytes are read and dropped until the client closes or the second
        is over. At most REFUSALS_LINGERING connections linger so; beyond, a refusal is a reset.
        """
        self.refused = True
        server.live -= 1  # not served: it does not count against the limit
        tcp = self.transport
        if not isinstance(tcp, asyncio.WriteTransport) or server.lingering >= REFUSALS_LINGERING:
            self.force_close()
            return
        server.lingering += 1
        self.lingering = True
        tcp.write(REFUSAL)
        if tcp.can_write_eof():
            tcp.write_eof()
        self._loop.call_later(REFUSAL_LINGER_SECONDS, self.force_close)

    def connection_lost(self, exc: BaseException | None) -> None:
        server = self._manager
        if isinstance(server, GuardedServer):
            if self.lingering:
                server.lingering -= 1
            elif not self.refused:
                server.live -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            super().data_received(data)

    def eof_received(self) -> None:
        if self.refused:
            self.force_close()
        super().eof_received()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == HTTPStatus.INTERNAL_SERVER_ERROR:
            answer = super().handle_error(request, status, exc, message)  # logs it, raises if already answering
        else:
            # the client's malformed bytes are not logged: aiohttp's message quotes the offending header, which
            # may be an Authorization or a Cookie (a token over the size limit)
            log.info("malformed HTTP from %s: %s", request.remote, type(exc).__name__ if exc else status)
            if request.writer is not None and request.writer.output_size > 0:
                raise ConnectionError("the response has started: no error answer can follow")
            answer = None
        if status == HTTPStatus.INTERNAL_SERVER_ERROR:
            body = error_body("internal_error", "the server failed to answer this request")
        elif isinstance(exc, LineTooLong) or "Too many headers" in str(message or exc):
            # the request line or a header field too long (SOMA-independent aiohttp limits: 8190 bytes, 128 fields)
            status = status_of("request_head_too_large")
            body = error_body("request_head_too_large", "the request line or headers exceed the server's limits")
        else:
            body = error_body("malformed_http", str(message or exc or HTTPStatus(status).phrase))
        response = web.json_response(body, status=status)
        response.force_close()
        del answer
        return response


class GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.max_connections = max_connections

    async def _make_server(self) -> Server:
        plain = await super()._make_server()
        # the same arguments aiohttp's Application._make_handler gave its Server
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            max_connections=self.max_connections,
            **plain._kwargs,
        )


class GuardedWeb(AiohttpWeb):
    """faust's aiohttp web driver on a :class:`GuardedRunner`."""

    def __init__(self, app: SomaApp, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        settings = app.settings
        self._runner = GuardedRunner(
            self.web_app,
            access_log=None,
            max_connections=connection_limit(settings.http_max_connections),
            # aiohttp starts this timer when a connection opens and after each response: a request head
            # not complete by then closes the connection
            keepalive_timeout=settings.http_idle_timeout_seconds,
        )

    def connection_counts(self) -> dict[str, int]:
        server = self._runner.server
        if not isinstance(server, GuardedServer):
            return {"open": 0, "max": 0, "accepted": 0, "refused": 0, "evicted": 0}
        return {
            "open": server.live,
            "max": server.max_connections,
            "accepted": server.accepted,
            "refused": server.refused,
            "evicted": server.evicted,
        }
