"""Server-Sent Events transport of a session stream: ``id:`` = seq, ``event:`` = type, ``data:`` = JSON.

A reconnecting browser sends ``Last-Event-ID`` and resumes exactly. After the replay an ``event:
recovered`` (no ``id``, so the browser's position is kept) says whether it was complete. Idle streams
get a ``: ping`` comment every ``SOMA_SSE_HEARTBEAT_SECONDS``; a slow reader's stream is ended (the
browser reconnects and resumes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from views.connections import registry
from views.session_stream import SessionStream, SlowReader

if TYPE_CHECKING:
    from app.faust_app import SomaApp

log = logging.getLogger(__name__)


def event_bytes(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {data}\n\n".encode()


class SseConnection:
    def __init__(
        self, app: SomaApp, request: web.Request, response: web.StreamResponse, session_id: str, after: int
    ) -> None:
        self.app = app
        self.request = request
        self.response = response
        self.session_id = session_id
        self.stream = SessionStream(app, session_id, after)
        self._send_lock = asyncio.Lock()
        self._done = asyncio.Event()

    async def run(self) -> None:
        registry.add(self)
        await self.stream.open()
        tasks = [
            asyncio.create_task(self._send_events(), name=f"sse send {self.session_id}"),
            asyncio.create_task(self._heartbeat(), name=f"sse ping {self.session_id}"),
            asyncio.create_task(self._end_when_overflowing(), name=f"sse watchdog {self.session_id}"),
        ]
        try:
            await self._done.wait()
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            registry.remove(self)
            await self.stream.close()

    async def _write(self, chunk: bytes) -> None:
        async with self._send_lock:
            await self.response.write(chunk)

    async def _send_events(self) -> None:
        try:
            await self._write(f"retry: {self.app.settings.sse_retry_ms}\n\n".encode())
            async for event in self.stream.history():
                await self._write(event_bytes(event))
            recovery = json.dumps(self.stream.recovery.frame(), separators=(",", ":"))
            await self._write(f"event: recovered\ndata: {recovery}\n\n".encode())
            async for event in self.stream.live():
                await self._write(event_bytes(event))
        except SlowReader:
            self._abort()
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away
        except Exception:
            log.exception("SSE stream of session %s failed", self.session_id)
        self._done.set()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.app.settings.sse_heartbeat_seconds)
            # a comment line: ignored by EventSource, keeps proxies from closing an idle stream
            try:
                await self._write(b": ping\n\n")
            except (ConnectionResetError, RuntimeError):
                self._done.set()
                return

    async def _end_when_overflowing(self) -> None:
        await self.stream.overflowed.wait()
        self._abort()
        self._done.set()

    def _abort(self) -> None:
        # the writer may be blocked on a reader that does not read: drop the connection under it
        if self.request.transport is not None:
            self.request.transport.close()

    async def shutdown(self) -> None:
        self._done.set()


async def serve(app: SomaApp, request: web.Request, session_id: str, after: int) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    await response.prepare(request)
    await SseConnection(app, request, response, session_id, after).run()
    return response
