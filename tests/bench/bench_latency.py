"""POST -> WebSocket delivery latency at 200 messages/s for 30 s, beside raw Kafka produce -> consume latency."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.support.isolation import Isolated
from tests.support.kafka import create_topic
from tests.support.worker import Worker

RATE = 200
SECONDS = 30
SESSIONS = 20


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ordered[-1] * 1000:.1f} ms over {len(ordered)} messages"


async def paced(count: int, send: object) -> None:
    began = time.perf_counter()
    tasks = []
    for n in range(count):
        tasks.append(asyncio.create_task(send(n)))  # type: ignore[operator]
        ahead = began + (n + 1) / RATE - time.perf_counter()
        if ahead > 0:
            await asyncio.sleep(ahead)
    await asyncio.gather(*tasks)


async def kafka_baseline(bootstrap: str, topic: str) -> list[float]:
    """The same rate straight through the broker: aiokafka producer (acks=all) to a consumer."""
    await create_topic(bootstrap, topic, 3)
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
        await asyncio.sleep(1)

        async def receive() -> None:
            while len(latencies) < RATE * SECONDS:
                async for record in consumer:
                    latencies.append(time.perf_counter() - sent[record.value])
                    if len(latencies) == RATE * SECONDS:
                        return

        receiving = asyncio.create_task(receive())

        async def send(n: int) -> None:
            value = f"{n}".encode()
            sent[value] = time.perf_counter()
            await producer.send_and_wait(topic, value, key=f"s{n % SESSIONS}".encode())

        await paced(RATE * SECONDS, send)
        await asyncio.wait_for(receiving, 60)
    finally:
        await producer.stop()
        await consumer.stop()
    return latencies


async def test_post_to_websocket_latency(iso: Isolated, artifacts: Path) -> None:
    worker = Worker(iso.env(), artifacts / "logs" / f"bench-latency-{iso.tag}.log").start()
    try:
        await worker.wait_http()
        sessions = [f"lat-{n}" for n in range(SESSIONS)]
        posted: dict[str, float] = {}
        acked: list[float] = []
        delivered: list[float] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            sockets = [await http.ws_connect(f"{worker.url}/v1/session/{s}/stream") for s in sessions]
            for ws in sockets:
                assert json.loads((await ws.receive()).data)["type"] == "recovered"

            async def listen(ws: aiohttp.ClientWebSocketResponse) -> None:
                async for message in ws:
                    frame = json.loads(message.data)
                    if "seq" in frame:
                        delivered.append(time.perf_counter() - posted[frame["message"]])
                        if len(delivered) == RATE * SECONDS:
                            return

            # warm-up, not measured: the group settles and every path (Kafka, Postgres, Redis) is connected
            for n in range(RATE):
                async with http.post(
                    worker.url + "/v1/session/message",
                    json={"session_id": sessions[n % SESSIONS], "message": f"warm-up {n}"},
                ) as resp:
                    assert resp.status == 202
            for ws in sockets:
                for _ in range(RATE // SESSIONS):
                    assert "seq" in json.loads((await ws.receive(timeout=60)).data)

            listeners = [asyncio.create_task(listen(ws)) for ws in sockets]

            async def send(n: int) -> None:
                text = f"m{n}"
                posted[text] = time.perf_counter()
                async with http.post(
                    worker.url + "/v1/session/message", json={"session_id": sessions[n % SESSIONS], "message": text}
                ) as resp:
                    assert resp.status == 202
                acked.append(time.perf_counter() - posted[text])

            await paced(RATE * SECONDS, send)
            deadline = time.monotonic() + 60
            while len(delivered) < RATE * SECONDS and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            for task in listeners:
                task.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)
            await asyncio.gather(*(ws.close() for ws in sockets))
    finally:
        worker.stop()
    baseline = await kafka_baseline(iso.settings.kafka_bootstrap, iso.topic("bench.baseline"))
    print(f"\n{RATE} messages/s for {SECONDS} s, {SESSIONS} sessions, one worker:")
    print(f"  POST -> 202 (broker acked)      {percentiles(acked)}")
    print(f"  POST -> WebSocket delivery      {percentiles(delivered)}")
    print(f"  baseline, raw aiokafka produce (acks=all) -> consume: {percentiles(baseline)}")
    assert len(delivered) == RATE * SECONDS
