"""Table updates per second, redis:// beside memory://, in one process with the real Kafka producer and Redis."""

from __future__ import annotations

import asyncio
import time
import weakref

from faust.events import Event
from faust.streams import _current_event
from faust.types.tuples import Message

import tables  # noqa: F401 - registers the redis:// store
from app.faust_app import create_app
from tables.redis_store import RedisStore
from tests.support.isolation import Isolated
from tests.support.kafka import end_offsets

UPDATES = 100_000
KEYS = 10_000
PARTITIONS = 3
# like a stream handing the loop back between events: the producer and the write-behind task run meanwhile
YIELD_EVERY = 100
ROUNDS = 2


async def run(iso: Isolated, store_url: str, name: str, updates: int = UPDATES) -> dict[str, float]:
    app = create_app(iso.settings)
    table = app.Table(name, partitions=PARTITIONS, default=int, store=store_url)
    events = [
        Event(app, b"k", b"v", {}, Message("source", p, 0, time.time(), 0, {}, b"k", b"v", None))
        for p in range(PARTITIONS)
    ]
    await app.producer.start()
    store = table.data
    try:
        await table.changelog_topic.maybe_declare()
        if isinstance(store, RedisStore):
            await store.start()
            await store.assign(set(range(PARTITIONS)), set())
        began = time.perf_counter()
        for n in range(updates):
            key = n % KEYS
            token = _current_event.set(weakref.ref(events[key % PARTITIONS]))
            table[f"key-{key}"] = n
            _current_event.reset(token)
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        updated = time.perf_counter()
        topic = table.changelog_topic.get_topic_name()
        while await end_offsets(iso.settings.kafka_bootstrap, topic) < updates:
            await asyncio.sleep(0.05)
        logged = time.perf_counter()
        if isinstance(store, RedisStore):
            # durable in Redis: every partition's last confirmed offset written
            while any(part.dirty or part.redis_offset != part.offset for part in store._parts.values()):
                await asyncio.sleep(0.01)
        durable = time.perf_counter()
        return {
            "updates/s": updates / (updated - began),
            "changelog acked s": logged - began,
            "in the store copy s": durable - began,
        }
    finally:
        if isinstance(store, RedisStore):
            await store.stop()
        await app.producer.stop()


async def test_table_updates_per_second(iso: Isolated) -> None:
    # the first run in a process pays for connections and topic metadata: warm up, then alternate the stores
    await run(iso, "memory://", "warm-up", updates=10_000)
    results: dict[str, list[dict[str, float]]] = {"memory://": [], "redis://": []}
    for round_ in range(ROUNDS):
        for url in results:
            results[url].append(await run(iso, url, f"bench-{url[:-3]}-{round_}"))
    print(f"\n{UPDATES:,} table updates over {KEYS:,} keys, {PARTITIONS} partitions, best of {ROUNDS} alternating runs")
    print("(each update also sends its changelog record to Kafka, acks=all, as a faust table does):")
    for url, runs in results.items():
        best = max(runs, key=lambda figures: figures["updates/s"])
        durable = f"; Redis copy complete after {best['in the store copy s']:.2f} s" if url == "redis://" else ""
        print(
            f"  {url:10} {best['updates/s']:>8,.0f} updates/s; changelog acked after "
            f"{best['changelog acked s']:.2f} s{durable}"
        )
