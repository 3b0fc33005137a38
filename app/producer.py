"""The Kafka producer every publish goes through: acks from all in-sync replicas, idempotent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from faust.transport.drivers.aiokafka import Producer

# faust's conductor stops delivering consumed messages while more than this many table changelog records
# wait in the producer buffer (faust's 100 turned a burst of table writes into a stall of every agent);
# the buffer holds small futures, so a write-out of thousands of sessions fits without stopping intake
BUFFER_MAX_MESSAGES = 20_000


class IdempotentProducer(Producer):
    """aiokafka's defaults are acks=1 without idempotence; a record we accept must not be lost or doubled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffer.max_messages = BUFFER_MAX_MESSAGES

    def client(self) -> AIOKafkaProducer:
        """The aiokafka producer under faust's (raises NotReady before the worker started it)."""
        producer: AIOKafkaProducer = self._ensure_producer()
        return producer

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}
