"""The lifecycle both stream transports share: register, subscribe, run tasks until one ends, clean up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

import redis.exceptions

from app.errors import ApiError
from views.connections import registry
from views.session_stream import SessionStream

if TYPE_CHECKING:
    from aiohttp import web

    from app.faust_app import SomaApp


log = logging.getLogger(__name__)


class FeedUnavailable(ApiError):
    """Redis did not take the stream's subscription within ``SOMA_READ_DEADLINE_SECONDS``; safe to retry."""

    code = "feed_unavailable"
    retry_after = 1


class StreamConnection:
    """One client's stream of one session; a subclass supplies the tasks that serve it."""

    transport = "stream"

    def __init__(self, app: SomaApp, request: web.Request, session_id: str, after: int) -> None:
        self.app = app
        self.request = request
        self.session_id = session_id
        self.settings = app.settings.streams
        self.stream = SessionStream(app.resources, self.settings, session_id, after)
        self._send_lock = asyncio.Lock()
        self._ended = asyncio.Event()

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """Named coroutines serving the connection; the first to finish ends it."""
        raise NotImplementedError

    def end(self) -> None:
        self._ended.set()

    @contextlib.asynccontextmanager
    async def subscribed(self) -> AsyncIterator[None]:
        """The session feed subscribed, before the response starts: a failure is still an HTTP answer (503).

        Unsubscribed when the block ends, however it ends.
        """
        deadline = self.settings.subscribe_deadline_seconds
        try:
            async with asyncio.timeout(deadline):
                await self.stream.open()
        except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            raise FeedUnavailable(f"the session feed did not answer within {deadline:g} s; retry later") from exc
        try:
            yield
        finally:
            await self.stream.close()

    async def run(self) -> None:
        """Serve the (subscribed) stream until a task ends it."""
        registry.add(self)
        running = [
            asyncio.create_task(coro, name=f"{self.transport} {name} {self.session_id}")
            for name, coro in self.tasks().items()
        ]
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({*running, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*running, ended]:
                task.cancel()
            for task in running:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:
                    # a task's own failure ends the connection; it is never swallowed unsaid
                    log.exception("%s stream of session %s: its %s failed", self.transport, self.session_id, task)
            with contextlib.suppress(asyncio.CancelledError):
                await ended
            registry.remove(self)

    async def shutdown(self) -> None:
        """Close for a server shutdown; a transport sends its own goodbye first."""
        self.end()
