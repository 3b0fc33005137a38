"""Server-Sent Events transport of a session stream: ``id:`` = seq, ``event:`` = type, ``data:`` = JSON.

A reconnecting browser sends ``Last-Event-ID`` and resumes exactly. After the replay an ``event:
recovered`` (no ``id``, so the browser's position is kept) says whether it was complete. Idle streams
get a ``: ping`` comment every ``SOMA_SSE_HEARTBEAT_SECONDS``; a slow reader's stream is ended (the
browser reconnects and resumes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from app import events, metrics
from app.feed_hub import FeedItem
from views.base import principal
from views.session_stream import SlowReader
from views.stream_connection import StreamConnection

if TYPE_CHECKING:
    from app.faust_app import SomaApp

log = logging.getLogger(__name__)
DELIVERED = metrics.streams.delivered  # events written, by transport (app/metrics.py reads them)


def event_bytes(item: FeedItem) -> bytes:
    """The SSE frame of one event (its JSON holds no newline, so it is one ``data:`` line)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (item.seq, item.event["type"].encode(), item.raw)


class SseConnection(StreamConnection):
    transport = "sse"

    def __init__(
        self, app: SomaApp, request: web.Request, response: web.StreamResponse, session_id: str, after: int
    ) -> None:
        super().__init__(app, request, session_id, after, principal(request))
        self.response = response

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {"send": self._send_events(), "ping": self._heartbeat(), "watchdog": self._end_when_overflowing()}

    async def _write(self, chunk: bytes) -> None:
        async with self._send_lock:
            self.check_open()
            await self.response.write(chunk)

    async def _send_events(self) -> None:
        try:
            await self._write(f"retry: {self.settings.sse_retry_ms}\n\n".encode())
            async for item in self.stream.history():
                await self._write(item.frame("sse", event_bytes))
                DELIVERED["sse"] += 1
            recovery = events.encode(self.stream.recovery.frame())
            await self._write(b"event: recovered\ndata: %s\n\n" % recovery)
            async for item in self.stream.live():
                await self._write(item.frame("sse", event_bytes))
                DELIVERED["sse"] += 1
        except SlowReader:
            self._abort()
        except (ConnectionResetError, RuntimeError) as exc:  # the client went away (aiohttp: closing transport)
            log.debug("SSE stream of session %s: the client went away (%r)", self.session_id, exc)
        except Exception:
            log.exception("SSE stream of session %s failed", self.session_id)
        self.end()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sse_heartbeat_seconds)
            # a comment line: ignored by EventSource, keeps proxies from closing an idle stream
            try:
                await self._write(b": ping\n\n")
            except (ConnectionResetError, RuntimeError) as exc:  # the client went away
                log.debug(
                    "SSE stream of session %s: heartbeat not sent, the client went away (%r)", self.session_id, exc
                )
                self.end()
                return

    async def _end_when_overflowing(self) -> None:
        await self.stream.overflowed.wait()
        self._abort()
        self.end()

    def _abort(self) -> None:
        # the writer may be blocked on a reader that does not read: drop the connection under it
        metrics.streams.closed["sse", "slow_reader"] += 1
        if self.request.transport is not None:
            self.request.transport.close()

    async def shutdown(self) -> None:
        metrics.streams.closed["sse", "shutdown"] += 1
        self.end()

    async def expire(self) -> None:
        metrics.streams.closed["sse", "token_expired"] += 1
        # no id: the browser keeps its position; it must get a new token (or ticket) before it reconnects
        reason = events.encode({"reason": "token_expired", "resume_after": self.stream.last_sent})
        try:
            await self._write(b"event: end\ndata: %s\n\n" % reason)
        except (ConnectionResetError, RuntimeError) as exc:
            log.debug("SSE stream of session %s: end not sent, the client went away (%r)", self.session_id, exc)
        self.end()


async def serve(app: SomaApp, request: web.Request, session_id: str, after: int) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    connection = SseConnection(app, request, response, session_id, after)
    async with connection.subscribed():
        await response.prepare(request)
        await connection.run()
    return response
