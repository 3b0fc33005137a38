"""The Kafka transport: faust's aiokafka driver with a consumer that never commits past an unprocessed record."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from faust.transport.drivers.aiokafka import Consumer, Transport
from faust.types import TP, Message
from faust.types.tuples import ack_lock

log = logging.getLogger(__name__)


class HeadKeepingConsumer(Consumer):
    """faust's consumer, fixed for two ways in which a rebalance lost records.

    **Acks of records no one processed.** A stream that meets a record during a rebalance (flow stopped, or
    the record fetched in an earlier generation) skips it and *acks* it, even on a ``noack`` stream. faust's
    periodic commit can then commit past it before the worker seeks back to the committed offset, and the
    record is never processed by anyone (tests/test_table_recovery.py lost one event this way when its
    workers were slowed down). Such acks are refused here: the record is read again after the rebalance (the
    seek to committed), and the idempotent store keeps it once. An ack of a batch stored just then is refused
    too, which costs a second, idempotent, store of it.

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

    refused_acks = 0

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


class SomaTransport(Transport):
    Consumer = HeadKeepingConsumer
