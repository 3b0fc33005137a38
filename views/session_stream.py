"""One client's view of a session: stored events after its position, then live ones, each seq once, no gaps.

Replies are folded in the history a stream replays (not in its live part, nor in ``GET .../events`` pages, which
are exact): a run of consecutive ``assistant.delta`` events of one reply is sent as one delta with their text
joined, at the seq of the last, and a run followed by the reply's final is left out, the final standing for it
(its text is theirs, joined). Such a frame carries ``folded: [first seq, last seq]``, the consecutive seqs it
stands for, so a client that joins mid-reply gets the reply so far in one frame, then the live deltas, and
one that joins after the final gets the final alone. Resume stays exact: a folded frame is sent at (or after)
the seq of every delta it stands for, and the events between two runs are sent where they are, so whatever
lies at or before the last seq a client received, it has, in full, and a resume after it misses nothing.

The recovery model is Centrifugo's: the stream subscribes to the session feed *before* it reads history,
so an event committed after the read is on the feed; live events at or below the last sequence sent are
dropped, and a live event beyond the next expected seq makes the stream fetch the missing ones from
Postgres first. The client is told whether everything it asked for was recovered.

Delivery cost is per event, not per viewer where it can be: the hub decodes an event once and each transport
frames it once (:class:`FeedItem`); a viewer that is caught up and whose socket takes data is written to from
the hub's callback (``direct``), without waking its task; anything else (a gap, a full socket buffer, a
resync) goes through the viewer's queue, in order, and is sent by its task.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.boundary import retry_transient
from app.feed_hub import FeedItem, FeedListener
from app.repository import events_after, head_seq

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from app.resources import Resources
    from app.settings import StreamSettings

PAGE = 500


DELTA = "assistant.delta"


def _same_reply(delta: dict[str, Any], event: dict[str, Any]) -> bool:
    """``event`` is the next delta, or the final, of the reply stream of ``delta``."""
    return event.get("stream_id") == delta["stream_id"] and event.get("type") in (DELTA, "assistant.final")


def _joined(run: list[dict[str, Any]]) -> dict[str, Any]:
    """One delta for a run of consecutive deltas of a reply: their text joined, at the seq (and index) of the
    last, ``folded`` naming the seqs it stands for."""
    if len(run) == 1:
        return run[0]
    text = "".join(str(delta.get("message", "")) for delta in run)
    return {**run[-1], "message": text, "folded": [run[0]["seq"], run[-1]["seq"]]}


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

    def __init__(self, resources: Resources, settings: StreamSettings, session_id: str, after: int) -> None:
        self.resources = resources
        self.settings = settings
        self.session_id = session_id
        self.requested_after = after
        self.last_sent = after
        self._max = settings.queue_max
        # None asks ``live`` to read Postgres past the last sent seq: events published during an outage
        self._pending: deque[FeedItem | None] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._overflow = asyncio.Event()
        self._listener = FeedListener(self._on_event, self._on_resync)
        self._subscribed = False
        # set by a transport that can write a caught-up viewer's event at once; returns False when it cannot
        self.direct: Callable[[FeedItem], bool] | None = None

    # -- feed callbacks (run on the loop, must not block) -------------------------------------------------
    def _on_event(self, item: FeedItem) -> None:
        if (
            self._waiter is not None
            and self.direct is not None
            and not self._pending
            and item.seq == self.last_sent + 1
            and self.direct(item)
        ):
            self.last_sent = item.seq
            return
        self._enqueue(item)

    def _on_resync(self) -> None:
        self._enqueue(None)

    def _enqueue(self, item: FeedItem | None) -> None:
        if len(self._pending) >= self._max:
            self._overflow.set()
        else:
            self._pending.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def overflowed(self) -> asyncio.Event:
        return self._overflow

    # -- the stream ---------------------------------------------------------------------------------------
    async def open(self) -> None:
        await self.resources.feed_hub().subscribe(self.session_id, self._listener)
        self._subscribed = True

    async def close(self) -> None:
        if self._subscribed:
            self._subscribed = False
            await self.resources.feed_hub().unsubscribe(self.session_id, self._listener)

    async def _read(self, after: int, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        pool = await self.resources.postgres()
        return await retry_transient(
            f"read session {self.session_id}", lambda: events_after(pool, self.session_id, after, limit, before)
        )

    async def history(self) -> AsyncIterator[FeedItem]:
        """Stored events after the requested seq, page by page; then ``recovery`` says if that was all.

        Seqs run 1..head without gaps, so the head seq alone tells how much there is to replay.
        """
        pool = await self.resources.postgres()
        head = await retry_transient(f"head of session {self.session_id}", lambda: head_seq(pool, self.session_id))
        after = self.requested_after
        if after > head or head - after > self.settings.recovery_max:
            # a position this session never reached, or more than a stream may replay: go live from the head
            self.recovery = Recovery(after, False, head, 0)
            self.last_sent = head
            return
        replayed = 0
        run: list[dict[str, Any]] = []  # consecutive deltas of one reply, held back to be sent as one frame
        while self.last_sent < head:
            page = await self._read(self.last_sent, PAGE, head + 1)
            if not page:
                break
            for event in page:
                self.last_sent = event["seq"]
                if run and _same_reply(run[-1], event):
                    if event["type"] == DELTA:
                        run.append(event)
                        continue
                    # the reply's final: its text is the deltas', which it stands for
                    event = {**event, "folded": [run[0]["seq"], run[-1]["seq"]]}
                    run = []
                if run:
                    replayed += 1
                    yield FeedItem.of(_joined(run))
                    run = []
                if event.get("type") == DELTA and event.get("stream_id"):
                    run = [event]
                    continue
                replayed += 1
                yield FeedItem.of(event)
        if run:  # a reply still being written: what it has written so far, in one frame
            replayed += 1
            yield FeedItem.of(_joined(run))
        self.recovery = Recovery(after, self.last_sent >= head, head, replayed)

    async def live(self) -> AsyncIterator[FeedItem]:
        """Live events in seq order, gaps filled from Postgres; raises SlowReader on overflow.

        While it waits with nothing queued, the hub may hand caught-up events to ``direct`` instead.
        """
        while True:
            if self._overflow.is_set():
                raise SlowReader(f"more than {self._max} events behind")
            if not self._pending:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            item = self._pending.popleft()
            if item is None:
                # the feed reconnected: whatever was stored meanwhile comes from Postgres, all of it
                async for missed in self._catch_up():
                    yield missed
                continue
            if item.seq <= self.last_sent:
                continue
            if item.seq > self.last_sent + 1:
                async for missed in self._catch_up(before=item.seq):
                    yield missed
            self.last_sent = item.seq
            yield item

    async def _catch_up(self, before: int | None = None) -> AsyncIterator[FeedItem]:
        """The stored events after the last one sent (and before ``before``), page by page, in seq order.

        Like a resume, at most ``SOMA_STREAM_RECOVERY_MAX`` of them: a viewer further behind (the feed away a
        long time on a busy session) is closed as a slow reader, to resume from its last seq.
        """
        limit = self.settings.recovery_max
        replayed = 0
        while True:
            page = await self._read(self.last_sent, PAGE, before)
            for event in page:
                if replayed == limit:
                    raise SlowReader(f"more than {limit} stored events behind")
                replayed += 1
                self.last_sent = event["seq"]
                yield FeedItem.of(event)
            if len(page) < PAGE:
                return
