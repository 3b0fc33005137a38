"""W2 latency and W3 fan-out: POST -> WebSocket delivery through one worker, beside raw Kafka and Centrifugo."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.bench import loadgen
from tests.bench.centrifugo import Centrifugo
from tests.bench.harness import Result, Stack, cpu_seconds, log_path, start_worker, summary_ms
from tests.support.isolation import Isolated
from tests.support.kafka import create_topic


def _load(target: str, base: str, sessions: int, viewers: int, rate: int, seconds: int, pid: int) -> Result:
    """Run the Go load generator against ``base``; adds the server's CPU per delivery to its result."""
    began = cpu_seconds(pid)
    result = loadgen.run(
        "-target", target, "-base", base, "-sessions", str(sessions), "-viewers-per-session", str(viewers),
        "-rate", str(rate), "-duration", str(seconds), "-prefix", f"b{uuid.uuid4().hex[:8]}",
        timeout=seconds + 240,
    )  # fmt: skip
    cpu = cpu_seconds(pid) - began
    result["server_cpu_s"] = round(cpu, 2)
    result["server_cpu_us_per_delivery"] = round(cpu * 1e6 / max(1, result["deliveries"]), 1)
    return result


async def kafka_baseline(bootstrap: str, topic: str, rate: int, seconds: int, sessions: int) -> Result:
    """The same rate straight through the broker: aiokafka producer (acks=all) to one consumer, latency each."""
    await create_topic(bootstrap, topic, 3)
    count = rate * seconds
    sent: dict[bytes, float] = {}
    latencies: list[float] = []
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=f"bench-{uuid.uuid4().hex[:6]}"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.1)
        # the consumer's position is resolved before the first measured record is sent
        await consumer.seek_to_end()

        async def receive() -> None:
            async for record in consumer:
                latencies.append(time.perf_counter() - sent[record.value])
                if len(latencies) == count:
                    return

        receiving = asyncio.create_task(receive())
        began = time.perf_counter()
        pending = []
        for n in range(count):
            value = str(n).encode()
            sent[value] = time.perf_counter()
            pending.append(await producer.send(topic, value, key=f"s{n % sessions}".encode()))
            ahead = began + (n + 1) / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
        await asyncio.wait_for(receiving, 60)
    finally:
        await producer.stop()
        await consumer.stop()
    return {"deliveries": len(latencies), "delivery_ms": summary_ms(latencies)}


async def _service_and_peer(
    stack: Stack,
    name: str,
    sessions: int,
    viewers: int,
    rate: int,
    seconds: int,
    baseline: Callable[[Isolated], Awaitable[Result]] | None = None,
) -> Result:
    """The same load on one worker (then ``baseline`` in its slice), then on Centrifugo (Redis engine)."""
    out: dict[str, Any] = {}
    with stack.slice(name) as iso:
        worker = start_worker(iso.env(), f"{name}-worker")
        try:
            await worker.wait_http()
            out["soma"] = await asyncio.to_thread(
                _load, "soma", worker.url, sessions, viewers, rate, seconds, worker.pid
            )
        finally:
            worker.stop()
        if baseline is not None:
            out["kafka"] = await baseline(iso)
    with Centrifugo("redis", stack.settings.redis_url, log_path(f"{name}-centrifugo")) as peer:
        out["centrifugo"] = await asyncio.to_thread(
            _load, "centrifugo", peer.url, sessions, viewers, rate, seconds, peer.pid
        )
    return out


async def latency(stack: Stack, rate: int, seconds: int, sessions: int) -> Result:
    """W2: ``rate`` messages/s over ``sessions`` sessions, one WebSocket viewer each; raw Kafka beside it."""

    def raw_kafka(iso: Isolated) -> Awaitable[Result]:
        return kafka_baseline(iso.settings.kafka_bootstrap, iso.topic("bench.latency"), rate, seconds, sessions)

    measured = await _service_and_peer(stack, "latency", sessions, 1, rate, seconds, raw_kafka)
    return {"rate": rate, "seconds": seconds, "sessions": sessions, **measured}


async def fanout(stack: Stack, rate: int, seconds: int, viewers: int) -> Result:
    """W3: one session watched by ``viewers`` WebSockets, ``rate`` messages/s."""
    measured = await _service_and_peer(stack, "fanout", 1, viewers, rate, seconds)
    return {"rate": rate, "seconds": seconds, "viewers": viewers, **measured}
