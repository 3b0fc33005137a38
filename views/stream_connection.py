"""The lifecycle both stream transports share: register, subscribe, run tasks until one ends, clean up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

import redis.exceptions

from app.auth import ANONYMOUS, Principal
from app.errors import ApiError
from views.connections import registry
from views.session_stream import SessionStream

if TYPE_CHECKING:
    from aiohttp import web

    from app.faust_app import SomaApp


log = logging.getLogger(__name__)
RECANCEL_SECONDS = 0.1


class FeedUnavailable(ApiError):
    """Redis did not take the stream's subscription within ``SOMA_READ_DEADLINE_SECONDS``; safe to retry."""

    code = "feed_unavailable"
    retry_after = 1


class StreamConnection:
    """One client's stream of one session; a subclass supplies the tasks that serve it."""

    transport = "stream"

    def __init__(
        self, app: SomaApp, request: web.Request, session_id: str, after: int, caller: Principal = ANONYMOUS
    ) -> None:
        self.app = app
        self.request = request
        self.principal = caller  # its token's expiry ends the stream
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

    def check_open(self) -> None:
        """Called before each write: nothing is written once the stream has ended (its tasks are ending)."""
        if self._ended.is_set():
            raise asyncio.CancelledError("the stream has ended")

    async def expire(self) -> None:
        """End the stream because the caller's token expired; a transport says so in its own way first."""
        self.end()

    async def _until_expiry(self) -> None:
        expires_at = self.principal.expires_at
        if expires_at is None:
            await asyncio.Event().wait()  # authentication off: the stream never expires
            return
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        await self.expire()

    @contextlib.asynccontextmanager
    async def subscribed(self) -> AsyncIterator[None]:
        """The session feed subscribed, before the response starts: a failure is still an HTTP answer (503).

        Unsubscribed when the block ends, however it ends.
        """
        settings = self.app.settings
        held = registry.reserve(
            self.principal.tenant, self.request.remote, settings.streams_per_tenant, settings.streams_per_address
        )
        try:
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
        finally:
            registry.release(held)

    async def run(self) -> None:
        """Serve the (subscribed) stream until a task ends it."""
        registry.add(self)
        running = [
            asyncio.create_task(coro, name=f"{self.transport} {name} {self.session_id}")
            for name, coro in {**self.tasks(), "expiry": self._until_expiry()}.items()
        ]
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({*running, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*running, ended]:
                task.cancel()
            for task in running:
                while not task.done():
                    # cancelled again until it ends: before Python 3.12, asyncio.wait_for (which aiopg awaits
                    # queries with) can swallow a cancellation that meets its result, and the task reads on
                    await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
                    task.cancel()
                if not task.cancelled() and task.exception() is not None:
                    # a task's own failure ends the connection; it is never swallowed unsaid
                    log.error(
                        "%s stream of session %s: its %s failed",
                        self.transport,
                        self.session_id,
                        task.get_name(),
                        exc_info=task.exception(),
                    )
            with contextlib.suppress(asyncio.CancelledError):
                await ended
            registry.remove(self)

    async def shutdown(self) -> None:
        """Close for a server shutdown; a transport sends its own goodbye first."""
        self.end()
