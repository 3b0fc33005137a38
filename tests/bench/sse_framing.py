"""Per-socket cost of aiohttp-sse's framing against the SSE block encoded once per event (views/sse.py).

``.venv/bin/python -m tests.bench.sse_framing``: the figures docs/architecture.md ("Streams") gives as the
reason the streams do not send through aiohttp-sse's ``EventSourceResponse.send``. Both sides run their real
code; only the socket write is left out (the same for both), so what is compared is the work done per socket.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp_sse import EventSourceResponse

from app import events
from app.feed_hub import FeedItem
from views.sse import event_bytes

EVENT = {
    "event_id": "6f1d1c52-0d0e-4a6e-9f3e-5b8e2c1a7d40",
    "session_id": "bench-session",
    "type": "assistant.delta",
    "role": "assistant",
    "message": "x" * 200,
    "metadata": {},
    "seq": 1234,
}
SOCKETS = 200_000


class Unwritten(EventSourceResponse):
    """aiohttp-sse's response with the socket write left out: ``send`` does all of its own work."""

    async def write(self, data: bytes) -> None:
        self.last = data


async def through_aiohttp_sse() -> float:
    response = Unwritten()
    data = events.encode(EVENT).decode()
    began = time.perf_counter()
    for _ in range(SOCKETS):
        await response.send(data, id=str(EVENT["seq"]), event=str(EVENT["type"]))
    return (time.perf_counter() - began) / SOCKETS


async def encoded_once() -> float:
    item = FeedItem.of(EVENT)
    sink: list[Any] = []

    async def write(data: bytes) -> None:
        sink.append(data)
        sink.clear()

    began = time.perf_counter()
    for _ in range(SOCKETS):
        await write(item.frame("sse", event_bytes))
    return (time.perf_counter() - began) / SOCKETS


async def main() -> None:
    for name, measure in (("aiohttp-sse send", through_aiohttp_sse), ("encoded once (views/sse.py)", encoded_once)):
        best = min([await measure() for _ in range(3)])
        print(f"{name}: {best * 1e6:.2f} us per socket")


if __name__ == "__main__":
    asyncio.run(main())
