"""Reading topics back from the real broker, the way a client would."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, OutOfOrderSequenceNumber, TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord


async def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning, waiting until at least ``expect`` have arrived."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] | None = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.2)
        assert partitions is not None, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord] = []
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for recs in batch.values():
                records.extend(recs)
            if len(records) >= expect:
                end = await consumer.end_offsets(tps)
                if all(await asyncio.gather(*(_at_end(consumer, tp, end[tp]) for tp in tps))):
                    return records
        raise AssertionError(f"{topic}: {len(records)} records within {timeout} s, expected {expect}")
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> bool:
    return await consumer.position(tp) >= end


async def end_offsets(bootstrap: str, topic: str) -> int:
    """Total number of records ever written to ``topic`` (sum of its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return 0
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]
) -> list[tuple[int, int]]:
    """Produce ``records`` (key, value, headers) in order with acks=all; returns (partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key, headers=headers) for key, value, headers in records]
        metadata = await asyncio.gather(*futures)
        return [(m.partition, m.offset) for m in metadata]
    finally:
        await producer.stop()


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def wait_consumed(bootstrap: str, group: str, topic: str, timeout: float = 60.0) -> None:
    """Wait until consumer group ``group`` has committed every partition of ``topic`` up to its end offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        end = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        committed: dict[TopicPartition, int] = {}
        while time.monotonic() < deadline:
            found = await admin.list_consumer_group_offsets(group, partitions=tps)
            committed = {tp: meta.offset for tp, meta in found.items()}
            if all(end[tp] == 0 or committed.get(tp, -1) >= end[tp] for tp in tps):
                return
            await asyncio.sleep(0.3)
        raise AssertionError(f"{group} did not consume {topic} to {end} within {timeout} s: at {committed}")
    finally:
        await admin.close()
        await consumer.stop()


async def topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    """The configuration of each of ``topics`` as the broker reports it (its own values and the defaults)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for _code, _message, _type, name, entries in response.resources:
            found[name] = {entry[0]: entry[1] for entry in entries}
    return found


async def produce_steadily(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
    per_second: float,
) -> None:
    """Produce ``records`` one by one at a steady rate, in order, riding out broker outages by resending.

    A send in flight when the broker went down can leave the idempotent producer's sequence behind the
    broker's (OutOfOrderSequenceNumber on every later send): a new producer then resends (a record may so be
    written twice, which the store keeps once).
    """

    def new_producer() -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=5000,
            retry_backoff_ms=200,
        )

    producer = new_producer()
    await producer.start()
    try:
        began = time.monotonic()
        for n, (key, value, headers) in enumerate(records):
            while True:
                try:
                    await producer.send_and_wait(topic, value=value, key=key, headers=headers)
                    break
                except OutOfOrderSequenceNumber:
                    await producer.stop()
                    producer = new_producer()
                    await producer.start()
                except KafkaError:
                    await asyncio.sleep(0.2)
            ahead = began + (n + 1) / per_second - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()
