"""The Kafka producer every publish goes through: acks from all in-sync replicas, idempotent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers.aiokafka import Producer


class IdempotentProducer(Producer):
    """aiokafka's defaults are acks=1 without idempotence; a record we accept must not be lost or doubled."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}
