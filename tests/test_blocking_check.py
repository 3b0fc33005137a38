"""The fixture that fails a test whose event loop a synchronous call blocked (tests/conftest.py) does fail."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from blockbuster import BlockingError


async def test_a_blocking_call_on_the_event_loop_is_an_error() -> None:
    with pytest.raises(BlockingError):
        time.sleep(0.001)  # noqa: ASYNC251 - the blocking call under test
    with pytest.raises(BlockingError):
        Path(__file__).read_text()  # noqa: ASYNC240 - the blocking call under test


async def test_the_same_call_through_a_thread_is_not() -> None:
    await asyncio.to_thread(time.sleep, 0.001)
    assert "blocking" in await asyncio.to_thread(Path(__file__).read_text)


def test_a_synchronous_test_may_block() -> None:
    time.sleep(0.001)
