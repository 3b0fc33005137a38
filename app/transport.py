"""The Kafka transport: faust's aiokafka driver with a consumer that never commits past an unprocessed record."""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import AsyncIterator, Coroutine, Generator, Mapping
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer, Transport
from faust.types import TP, Message
from faust.types.transports import TPorTopicSet
from faust.types.tuples import ack_lock
from mode import ServiceT
from mode.utils.queues import FlowControlEvent

log = logging.getLogger(__name__)


# how often fetched records are looked for while a partition waits for room in its stream's buffer
BUFFERED_POLL_SECONDS = 0.01


class HeadKeepingConsumer(Consumer):
    """faust's consumer, fixed for three ways in which it lost records.

    **Acks of records no one processed.** A stream that meets a record during a rebalance (flow stopped, or
    the record fetched in an earlier generation) skips it and *acks* it, even on a ``noack`` stream. faust's
    periodic commit can then commit past it before the worker seeks back to the committed offset, and the
    record is never processed by anyone (tests/test_table_recovery.py lost one event this way when its
    workers were slowed down). Such acks are refused here: the record is read again after the rebalance (the
    seek to committed), and the idempotent store keeps it once. An ack of a batch stored just then is refused
    too, which costs a second, idempotent, store of it.

    **A record skipped at a partition's head is read again.** faust commits past a single record that was
    never acked right after the committed offset (its check lets a head gap of one through), and a record has
    been seen skipped so after a worker restart (tests/test_event_core.py, about 1 run in 20 on a busy
    machine: the first record produced while the new worker sought to its committed offsets). Here a head gap
    stops commits for that partition, and one still there a commit interval later seeks the partition back to its
    committed offset: the skipped record is processed late, never lost (what was processed meanwhile is stored
    once by the idempotent store).

    **Partitions that have no committed offset yet.**
    While a worker recovers its tables after an assignment, aiokafka already fetches the new input partitions,
    and faust's recovery loop drops what it fetched for them. faust then "seeks to committed", which for a
    partition with no committed offset (a new topic, a session no one has written yet) does not move the
    position, so the records dropped in recovery were never processed: the first event of a partition lost in
    a rebalance (tests/test_table_recovery.py). Such partitions go back to their first offset instead, which
    is where ``auto_offset_reset=earliest`` starts them; the store keeps an event read twice once.
    """

    def ack(self, message: Message) -> bool:
        app = self.app
        if app.flow_control.is_active() and message.generation_id == app.consumer_generation_id:
            return super().ack(message)
        with ack_lock:
            # settled without counting as processed: nothing waits for it (faust's wait_empty), nothing commits it
            if not message.acked:
                message.acked = True
                self._unacked_messages.discard(message)
                self.refused_acks += 1
        return False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused_acks = 0
        # partition -> (committed offset, lowest acked offset, first seen): records skipped at the head
        self._head_gaps: dict[TP, tuple[int, int, float]] = {}

    def _new_offset(self, tp: TP) -> int | None:
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if committed is not None and acked:
            lowest = min(acked)
            gaps = self._gap[tp]
            if gaps:
                lowest = min(lowest, min(interval.begin for interval in gaps))
            if lowest > committed:
                self._head_gaps.setdefault(tp, (committed, lowest, time.monotonic()))
                return None
        self._head_gaps.pop(tp, None)
        result: int | None = super()._new_offset(tp)
        return result

    async def commit(self, topics: TPorTopicSet | None = None, start_new_transaction: bool = True) -> bool:
        if self._head_gaps:
            assigned = self.assignment()
            now = time.monotonic()
            for tp, (committed, lowest, since) in list(self._head_gaps.items()):
                if tp not in assigned:
                    del self._head_gaps[tp]
                elif now - since >= self.commit_interval:
                    del self._head_gaps[tp]
                    log.warning(
                        "%s[%d]: records %d..%d were skipped (acked from %d on); reading again from %d",
                        tp.topic,
                        tp.partition,
                        committed,
                        lowest - 1,
                        lowest,
                        committed,
                    )
                    await self.seek(tp, committed)
        result: bool = await super().commit(topics, start_new_transaction=start_new_transaction)
        return result

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        """faust's loop handing fetched records to the streams, with each record's handler run inline.

        faust runs the handler of every record (the conductor's, which puts it in its streams' queues) as a
        task raced against ``suspend_flow`` in ``wait_first``: four tasks and an ``asyncio.wait`` per record,
        ~15 % of a busy worker's CPU, and a record handed on only once per turn of the event loop. The handler
        almost never waits (only when a stream's queue is full), so its first step runs here; a handler that
        does wait continues as a task raced against ``suspend_flow`` exactly as faust does it.
        """
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set  # type: ignore[attr-defined]
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspend_flow = self.suspend_flow
        yield_every = 100
        num_since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await asyncio.sleep(0)
                if self.should_stop:
                    continue
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await asyncio.sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # read already (faust's "DROPPED MESSAGE")
                    if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    handler = cast(Coroutine[Any, Any, Any], callback(message))  # the conductor's async def
                    try:
                        waiting_on = handler.send(None)
                    except StopIteration:
                        pass  # handed on without waiting: the common case
                    else:
                        rest = asyncio.ensure_future(_continue(handler, waiting_on))
                        await self.wait_first(rest, suspend_flow.wait())
                    set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109
        """faust's ``Consumer.getmany``, except that no record aiokafka handed over is dropped silently.

        faust skips the records of a partition that is not active when it iterates them, and the rest of the
        batch when the flow stops or the generation changes; aiokafka's position is already past them, so they
        were never read again. Here the partition is sought back to the first record not handed on.
        """
        # A partition paused while its stream's buffer was full is taken back when the buffer drains, but
        # nothing wakes a fetch already waiting for the other partitions' records: with faust's 1 s a worker
        # storing a backlog read it in bursts of ~8,000 records and stood idle ~40 % of the time in between
        # (docs/benchmarks.md). While a partition is paused so, fetched records are looked for more often.
        if self._buffered_partitions:
            timeout = min(timeout, BUFFERED_POLL_SECONDS)
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as exc:
                log.warning("seeking back to committed offsets while the flow is stopped failed: %r", exc)
            return
        to_message = self._to_message
        not_handed: dict[TP, int] = {}
        stopped = False
        for tp, record in self.scheduler.iterate(records):
            if tp in not_handed:
                continue
            if stopped or not self.flow_active or self.app.consumer_generation_id != generation_id:
                stopped = True
                not_handed[tp] = record.offset
                continue
            if active_partitions is None or tp in active_partitions or tp in self._buffered_partitions:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, to_message(tp, record)
            else:
                not_handed[tp] = record.offset
        for tp, offset in not_handed.items():
            if tp in self.assignment():
                log.info("%s[%d]: fetched while not active; reading again from %d", tp.topic, tp.partition, offset)
                await self.seek(tp, offset)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        if self.refused_acks:
            log.info("%d records met during the rebalance are read again, not committed", self.refused_acks)
            self.refused_acks = 0
        # aiokafka answers None for a partition without a committed offset, whatever faust's annotation says
        committed: Mapping[Any, Any] = await super().seek_to_committed()
        changelogs = self.app.tables.changelog_topics
        heads = [tp for tp, offset in committed.items() if offset is None and tp.topic not in changelogs]
        if heads:
            log.info("no committed offset for %d input partitions: reading them from their first record", len(heads))
            await self._thread.seek_to_beginning(*heads)
        return committed


@types.coroutine
def _continue(coroutine: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """The rest of a coroutine whose first step ran elsewhere and yielded ``waiting_on``, for a task to run."""
    while True:
        try:
            sent = yield waiting_on
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as exc:  # thrown in by the task (a cancellation): the coroutine's to handle
            try:
                waiting_on = coroutine.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                waiting_on = coroutine.send(sent)
            except StopIteration as stop:
                return stop.value


class ResumeKeepingFlowControl(FlowControlEvent):
    """faust's flow control of the streams, except that resuming a flow that is not suspended drops nothing.

    Resuming clears every stream's queue: records queued before a rebalance belong to an earlier generation and
    are read again after the seek to committed offsets. But faust's recovery resumes the flow twice after some
    assignments, the second time (after the seek, the fetcher running) with the flow already active, and that
    clear dropped live records of the new generation with no ack and no seek: the first event produced
    while a restarted worker finished its recovery was skipped, and only read again (out of its session's
    order) by the head-gap check above (tests/test_event_core.py, 2 to 4 runs in 16 with both cores busy).
    """

    def resume(self) -> None:
        if self.is_active():
            return  # already flowing: what the queues hold is current, and nothing will read it again
        super().resume()


# a topic just created is awaited this long in the brokers' metadata before the worker goes on without it
TOPIC_VISIBLE_SECONDS = 30.0


class SomaTransport(Transport):
    """faust's transport, whose topic creation returns only once the brokers list the new topic.

    The create request is answered before every broker's metadata has the topic. faust subscribes right after
    creating its topics, and a subscription whose metadata misses a topic leaves it unassigned until the next
    metadata refresh (a worker on a busy machine consumed nothing of a topic it had just created for minutes).
    """

    Consumer = HeadKeepingConsumer

    async def _really_create_topic(
        self, owner: Any, client: Any, topic: str, partitions: int, replication: int, **kwargs: Any
    ) -> None:
        await super()._really_create_topic(owner, client, topic, partitions, replication, **kwargs)
        deadline = time.monotonic() + TOPIC_VISIBLE_SECONDS
        while topic not in (await client.fetch_all_metadata()).topics():
            if time.monotonic() > deadline:
                log.warning(
                    "topic %s is not in the brokers' metadata %.0f s after it was created", topic, TOPIC_VISIBLE_SECONDS
                )
                return
            await asyncio.sleep(0.05)
