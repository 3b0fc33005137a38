"""The Kafka transport: faust's aiokafka driver with a consumer that never skips an uncommitted partition's head."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from faust.transport.drivers.aiokafka import Consumer, Transport
from faust.types import TP

log = logging.getLogger(__name__)


class HeadKeepingConsumer(Consumer):
    """faust's consumer, fixed for partitions that have no committed offset yet.

    While a worker recovers its tables after an assignment, aiokafka already fetches the new input partitions,
    and faust's recovery loop drops what it fetched for them. faust then "seeks to committed", which for a
    partition with no committed offset (a new topic, a session no one has written yet) does not move the
    position, so the records dropped in recovery were never processed: the first event of a partition lost in
    a rebalance (tests/test_table_recovery.py). Such partitions go back to their first offset instead, which
    is where ``auto_offset_reset=earliest`` starts them; the store keeps an event read twice once.
    """

    async def seek_to_committed(self) -> Mapping[TP, int]:
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
