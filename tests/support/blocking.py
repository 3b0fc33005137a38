"""Blocking helpers of tests, run off the event loop (tests/conftest.py fails a test whose loop was blocked)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from typing import TypeVar

T = TypeVar("T")


@asynccontextmanager
async def off_loop(manager: AbstractContextManager[T]) -> AsyncIterator[T]:
    """A blocking context manager (a private server's start and stop) entered and left in a thread."""
    value = await asyncio.to_thread(manager.__enter__)
    try:
        yield value
    except BaseException as exc:
        if not await asyncio.to_thread(manager.__exit__, type(exc), exc, exc.__traceback__):
            raise
    else:
        await asyncio.to_thread(manager.__exit__, None, None, None)
