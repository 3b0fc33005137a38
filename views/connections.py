"""Every open WebSocket and SSE stream of this worker, so that shutdown can close each one properly."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from aiohttp import web

log = logging.getLogger(__name__)


class Connection(Protocol):
    async def shutdown(self) -> None:
        """Close for a server shutdown (WebSocket: 1001 going away; SSE: end of stream)."""


class Registry:
    def __init__(self) -> None:
        self._open: set[Connection] = set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, connection: Connection) -> None:
        self._open.add(connection)

    def remove(self, connection: Connection) -> None:
        self._open.discard(connection)

    async def close_all(self, _: Any = None) -> None:
        if self._open:
            log.info("closing %d open streams", len(self._open))
        await asyncio.gather(*(c.shutdown() for c in list(self._open)), return_exceptions=True)


registry = Registry()


def install(web_app: web.Application) -> None:
    # aiohttp runs on_shutdown before it stops accepting and closes the sockets: the right moment for 1001
    web_app.on_shutdown.append(registry.close_all)
