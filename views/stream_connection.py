"""The lifecycle both stream transports share: register, subscribe, run tasks until one ends, clean up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from views.connections import registry
from views.session_stream import SessionStream

if TYPE_CHECKING:
    from aiohttp import web

    from app.faust_app import SomaApp


class StreamConnection:
    """One client's stream of one session; a subclass supplies the tasks that serve it."""

    transport = "stream"

    def __init__(self, app: SomaApp, request: web.Request, session_id: str, after: int) -> None:
        self.app = app
        self.request = request
        self.session_id = session_id
        self.stream = SessionStream(app, session_id, after)
        self._send_lock = asyncio.Lock()
        self._ended = asyncio.Event()

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """Named coroutines serving the connection; the first to finish ends it."""
        raise NotImplementedError

    def end(self) -> None:
        self._ended.set()

    async def run(self) -> None:
        registry.add(self)
        await self.stream.open()
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
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            registry.remove(self)
            await self.stream.close()

    async def shutdown(self) -> None:
        """Close for a server shutdown; a transport sends its own goodbye first."""
        self.end()
