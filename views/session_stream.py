"""One client's view of a session: stored events after its position, then live ones, each seq once, no gaps.

The recovery model is Centrifugo's: the stream subscribes to the session feed *before* it reads history,
so an event committed after the read is on the feed; live events at or below the last sequence sent are
dropped, and a live event beyond the next expected seq makes the stream fetch the missing ones from
Postgres first. The client is told whether everything it asked for was recovered.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.boundary import retry_transient
from app.feed_hub import FeedListener
from app.repository import events_after, head_seq

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from app.faust_app import SomaApp

PAGE = 500


class SlowReader(Exception):
    """The client fell ``SOMA_STREAM_QUEUE_MAX`` events behind the live feed."""


@dataclass(frozen=True)
class Recovery:
    """What a (re)connecting client asked for and got."""

    requested_after: int
    recovered: bool
    head_seq: int  # highest seq stored when the stream opened (or the last recovered)
    replayed: int

    def frame(self) -> dict[str, Any]:
        return {
            "type": "recovered",
            "recovered": self.recovered,
            "after": self.requested_after,
            "replayed": self.replayed,
            "head_seq": self.head_seq,
        }


class SessionStream:
    """Transport-independent: a WebSocket or SSE view drives it with ``open`` / ``history`` / ``live``."""

    def __init__(self, app: SomaApp, session_id: str, after: int) -> None:
        self.app = app
        self.session_id = session_id
        self.requested_after = after
        self.last_sent = after
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=app.settings.stream_queue_max)
        self._overflow = asyncio.Event()
        self._listener = FeedListener(self._on_event, self._on_resync)
        self._subscribed = False

    # -- feed callbacks (run on the loop, must not block) -------------------------------------------------
    def _on_event(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._overflow.set()

    def _on_resync(self) -> None:
        # None asks ``live`` to read Postgres past the last sent seq: events published during the outage
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            self._overflow.set()

    @property
    def overflowed(self) -> asyncio.Event:
        return self._overflow

    # -- the stream ---------------------------------------------------------------------------------------
    async def open(self) -> None:
        await self.app.resources.feed_hub().subscribe(self.session_id, self._listener)
        self._subscribed = True

    async def close(self) -> None:
        if self._subscribed:
            self._subscribed = False
            await self.app.resources.feed_hub().unsubscribe(self.session_id, self._listener)

    async def _read(self, after: int, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        pool = await self.app.resources.postgres()
        return await retry_transient(
            f"read session {self.session_id}", lambda: events_after(pool, self.session_id, after, limit, before)
        )

    async def history(self) -> AsyncIterator[dict[str, Any]]:
        """Stored events after the requested seq, page by page; then ``recovery`` says if that was all.

        Seqs run 1..head without gaps, so the head seq alone tells how much there is to replay.
        """
        pool = await self.app.resources.postgres()
        head = await retry_transient(f"head of session {self.session_id}", lambda: head_seq(pool, self.session_id))
        after = self.requested_after
        if after > head or head - after > self.app.settings.stream_recovery_max:
            # a position this session never reached, or more than a stream may replay: go live from the head
            self.recovery = Recovery(after, False, head, 0)
            self.last_sent = head
            return
        replayed = 0
        while self.last_sent < head:
            page = await self._read(self.last_sent, PAGE, head + 1)
            if not page:
                break
            for event in page:
                replayed += 1
                self.last_sent = event["seq"]
                yield event
        self.recovery = Recovery(after, self.last_sent >= head, head, replayed)

    async def live(self) -> AsyncIterator[dict[str, Any]]:
        """Live events in seq order, gaps filled from Postgres; raises SlowReader on overflow."""
        while True:
            if self._overflow.is_set():
                raise SlowReader(f"more than {self.app.settings.stream_queue_max} events behind")
            event = await self._next()
            if event is None:
                # the feed reconnected: whatever was stored meanwhile comes from Postgres
                for missed in await self._read(self.last_sent, PAGE):
                    self.last_sent = missed["seq"]
                    yield missed
                continue
            seq = event["seq"]
            if seq <= self.last_sent:
                continue
            if seq > self.last_sent + 1:
                for missed in await self._read(self.last_sent, seq - self.last_sent - 1, seq):
                    self.last_sent = missed["seq"]
                    yield missed
            self.last_sent = seq
            yield event

    async def _next(self) -> dict[str, Any] | None:
        if not self._queue.empty():
            return self._queue.get_nowait()
        getter = asyncio.ensure_future(self._queue.get())
        overflow = asyncio.ensure_future(self._overflow.wait())
        done, _ = await asyncio.wait({getter, overflow}, return_when=asyncio.FIRST_COMPLETED)
        overflow.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        raise SlowReader(f"more than {self.app.settings.stream_queue_max} events behind")
