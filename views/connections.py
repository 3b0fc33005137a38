"""Every open WebSocket and SSE stream of this worker, so that shutdown can close each one properly."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, Protocol

from aiohttp import web

from app.errors import ApiError

log = logging.getLogger(__name__)


class Connection(Protocol):
    async def shutdown(self) -> None:
        """Close for a server shutdown (WebSocket: 1001 going away; SSE: end of stream)."""


class TooManyStreams(ApiError):
    code = "too_many_streams"
    retry_after = 5


class Registry:
    def __init__(self) -> None:
        self._open: set[Connection] = set()
        # streams held (reserved before they open) per tenant and per client address
        self._held: Counter[str] = Counter()

    def reserve(self, tenant: str | None, address: str | None, per_tenant: int, per_address: int) -> list[str]:
        """Count a stream against its tenant's and address's limits (0: none); 429 when one is reached.

        Returns what to :meth:`release` when the stream ends.
        """
        keys = [key for key in (f"t:{tenant}" if tenant else None, f"a:{address}" if address else None) if key]
        for key, limit in zip(keys, [per_tenant if k.startswith("t:") else per_address for k in keys], strict=True):
            if limit and self._held[key] >= limit:
                who = "tenant" if key.startswith("t:") else "address"
                raise TooManyStreams(f"this {who} holds {limit} streams on this worker already; close one first")
        for key in keys:
            self._held[key] += 1
        return keys

    def release(self, keys: list[str]) -> None:
        for key in keys:
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]

    def __len__(self) -> int:
        return len(self._open)

    def count(self, transport: str) -> int:
        """Open streams of one transport ("ws" or "sse")."""
        return sum(1 for connection in self._open if getattr(connection, "transport", None) == transport)

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
