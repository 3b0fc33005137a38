"""The redis:// table store's contract, per partition, against the real Redis (and Kafka for the changelog)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.events import Event
from faust.exceptions import ImproperlyConfigured
from faust.streams import _current_event
from faust.types import TP
from faust.types.tuples import Message

import tables  # noqa: F401 - registers the redis:// store
from app import redis_client
from app.faust_app import SomaApp, create_app
from app.settings import Settings
from tables.redis_store import RedisStore
from tests.support.blocking import off_loop
from tests.support.isolation import Isolated
from tests.support.private import private_redis
from tests.support.tables import changelog_table, redis_table

ROOT = Path(__file__).resolve().parent.parent
Record = tuple[int, int, str, Any]  # partition, offset, key, value (None: tombstone)


@pytest.fixture
async def new_store(iso: Isolated) -> AsyncIterator[Callable[..., RedisStore]]:
    """Builds a table and its store (on a new app each time, as another worker would); closes them after."""
    made: list[RedisStore] = []

    def build(
        name: str = "things", settings: Settings | None = None, store: str | None = None, **options: Any
    ) -> RedisStore:
        app = create_app(settings or iso.settings)
        table = app.Table(name, partitions=3, default=None, store=store, **options)
        data = table.data
        assert isinstance(data, RedisStore)
        made.append(data)
        return data

    yield build
    for store in made:
        await store.client.aclose()


@contextmanager
def processing(store: RedisStore, partition: int) -> Iterator[None]:
    """Run the block as faust runs an agent: with a current event of ``partition`` of a source topic."""
    message = Message("source", partition, 0, time.time(), 0, {}, b"k", b"v", None)
    event = Event(store.app, b"k", b"v", {}, message)
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def changelog(store: RedisStore, records: list[Record], timestamp: float | None = None) -> list[Event]:
    """Changelog records of the store's table as faust's recovery hands them to a store."""
    topic = store.table.changelog_topic.get_topic_name()
    events = []
    for partition, offset, key, value in records:
        raw_key = store._encode_key(key)
        raw_value = None if value is None else store._encode_value(value)
        message = Message(topic, partition, offset, timestamp or time.time(), 0, {}, raw_key, raw_value, None)
        events.append(Event(store.app, raw_key, raw_value, {}, message))
    return events


def apply(store: RedisStore, records: list[Record], timestamp: float | None = None) -> None:
    store.apply_changelog_batch(changelog(store, records, timestamp), lambda k: k, lambda v: v)


def tp(store: RedisStore, partition: int) -> TP:
    return TP(store.table.changelog_topic.get_topic_name(), partition)


async def in_redis(store: RedisStore, partition: int) -> tuple[int | None, dict[bytes, bytes]]:
    copy = (await redis_table(store_settings(store), store.table_name, 3))[partition]
    return copy.offset, copy.values


def store_settings(store: RedisStore) -> Settings:
    app = store.app
    assert isinstance(app, SomaApp)
    return app.settings


async def test_each_partition_serves_its_own_keys(new_store: Callable[..., RedisStore]) -> None:
    store = new_store()
    await store.assign({0, 1, 2}, set())
    with processing(store, 0):
        store["k"] = "zero"
        store["only0"] = 1
    with processing(store, 1):
        store["k"] = "one"
    with processing(store, 0):
        assert store["k"] == "zero"
        assert "only0" in store
    with processing(store, 1):
        assert store["k"] == "one"
        assert "only0" not in store
        assert store.get("only0") is None
    assert len(store) == 3
    assert sorted(store.keys()) == ["k", "k", "only0"]
    assert sorted(store.items()) == [("k", "one"), ("k", "zero"), ("only0", 1)]
    assert sorted(map(str, store.values())) == ["1", "one", "zero"]
    with processing(store, 0):
        del store["only0"]
        assert "only0" not in store
        with pytest.raises(KeyError):
            store["only0"]
    assert len(store) == 2
    store.clear()
    assert len(store) == 0
    assert list(store.keys()) == []


async def test_standby_partitions_are_kept_but_neither_served_nor_written(
    new_store: Callable[..., RedisStore],
) -> None:
    store = new_store()
    await store.assign({0}, {1})
    apply(store, [(0, 0, "a", 1), (1, 0, "b", 2), (1, 1, "c", 3)])
    assert store.persisted_offset(tp(store, 0)) == 0
    assert store.persisted_offset(tp(store, 1)) == 1
    assert store.persisted_offset(tp(store, 2)) is None
    assert list(store.keys()) == ["a"]
    assert "b" not in store
    assert await store.flush()
    assert await in_redis(store, 0) == (0, {b'"a"': b"1"})
    assert await in_redis(store, 1) == (None, {})
    # promoted: the standby's changes are written
    await store.assign({0, 1}, set())
    assert await store.flush()
    assert await in_redis(store, 1) == (1, {b'"b"': b"2", b'"c"': b"3"})


async def test_redis_gets_a_change_only_once_the_changelog_has_it(new_store: Callable[..., RedisStore]) -> None:
    store = new_store()
    app, table = store.app, store.table
    await app.producer.start()
    try:
        await table.changelog_topic.maybe_declare()
        await store.assign({0, 1, 2}, set())
        with processing(store, 2):
            table["first"] = 1
        await confirmed(store, 2, 0)
        assert await store.flush()
        assert await in_redis(store, 2) == (0, {b'"first"': b"1"})
        with processing(store, 2):
            table["a"] = {"n": 1}
            table["b"] = {"n": 2}
            del table["a"]
            # served at once from memory, before the broker has even seen the records
            assert table["b"] == {"n": 2}
            assert "a" not in table
        assert await store.flush()
        assert await in_redis(store, 2) == (0, {b'"first"': b"1"})
        await confirmed(store, 2, 3)
        assert await store.flush()
        assert await in_redis(store, 2) == (3, {b'"first"': b"1", b'"b"': b'{"n":2}'})
        topic = table.changelog_topic.get_topic_name()
        replayed = await changelog_table(store_settings(store).kafka_bootstrap, topic, 3)
        assert (replayed[2].offset, replayed[2].values) == await in_redis(store, 2)
    finally:
        await app.producer.stop()


async def confirmed(store: RedisStore, partition: int, offset: int) -> None:
    deadline = time.monotonic() + 30
    while store.persisted_offset(tp(store, partition)) != offset:
        assert time.monotonic() < deadline, f"the changelog never confirmed offset {offset}"
        await asyncio.sleep(0.05)


async def test_values_and_offsets_come_back_from_redis_on_assignment(new_store: Callable[..., RedisStore]) -> None:
    first = new_store()
    await first.assign({0, 1, 2}, set())
    apply(first, [(0, n, f"k{n}", n) for n in range(5)])
    apply(first, [(1, 0, "x", "x0"), (1, 1, "y", "y1"), (1, 2, "x", "x2"), (1, 3, "y", None)])
    assert await first.flush()
    second = new_store()
    await second.assign({0, 1, 2}, set())
    assert [second.persisted_offset(tp(second, p)) for p in range(3)] == [4, 3, None]
    with processing(second, 0):
        assert [second[f"k{n}"] for n in range(5)] == [0, 1, 2, 3, 4]
    with processing(second, 1):
        assert second["x"] == "x2"
        assert "y" not in second
    assert len(second) == 6


@pytest.mark.parametrize("write", ["delta", "whole partition"])
async def test_a_writer_behind_the_offset_in_redis_is_fenced(new_store: Callable[..., RedisStore], write: str) -> None:
    old_owner, new_owner = new_store(), new_store()
    if write != "delta":
        await old_owner.assign({0}, set())  # finds no copy: writes the whole partition
    await new_owner.assign({0}, set())
    apply(new_owner, [(0, n, f"k{n}", "new") for n in range(6)])
    assert await new_owner.flush()
    if write == "delta":
        await old_owner.assign({0}, set())  # reads the copy at offset 5: writes what follows
    apply(new_owner, [(0, n, f"k{n}", "new") for n in range(6, 21)])
    assert await new_owner.flush()
    apply(old_owner, [(0, n, f"k{n}", "old") for n in range(0 if write != "delta" else 6, 11)])
    assert await old_owner.flush()
    offset, values = await in_redis(new_owner, 0)
    assert offset == 20
    assert set(values.values()) == {b'"new"'}
    assert old_owner._parts[0].fenced
    # a fenced partition is read again if it is assigned again
    await old_owner.assign({0}, set())
    assert old_owner.persisted_offset(tp(old_owner, 0)) == 20
    with processing(old_owner, 0):
        assert old_owner["k3"] == "new"


@pytest.mark.parametrize("damage", ["restarted empty", "restored an older file", "evicted the values"])
async def test_a_lost_copy_is_noticed_and_written_whole(new_store: Callable[..., RedisStore], damage: str) -> None:
    store = new_store()
    await store.assign({0}, set())
    apply(store, [(0, n, f"k{n}", n) for n in range(10)])
    assert await store.flush()
    keys = store.layout.partition(0)
    if damage == "restarted empty":
        await store.client.delete(keys.data, keys.meta)
    elif damage == "restored an older file":
        await store.client.hdel(keys.data, '"k9"', '"k8"')
        await store.client.hset(keys.meta, mapping={"offset": 7, "size": 8})
    else:
        await store.client.delete(keys.data)
    apply(store, [(0, 10, "k10", 10)])
    assert await store.flush()
    assert await in_redis(store, 0) == (10, {f'"k{n}"'.encode(): str(n).encode() for n in range(11)})


async def test_a_rewrite_writes_what_the_changelog_holds_not_changes_in_flight(
    new_store: Callable[..., RedisStore],
) -> None:
    store = new_store()
    await store.assign({0}, set())
    apply(store, [(0, 0, "k", "confirmed"), (0, 1, "gone", "g")])
    assert await store.flush()
    with processing(store, 0):
        # served at once, but their changelog records are not confirmed: Redis must not hold them yet
        store["k"] = "in flight"
        del store["gone"]
        store["new"] = "in flight"
    keys = store.layout.partition(0)
    await store.client.delete(keys.data, keys.meta)
    apply(store, [(0, 2, "other", "o")])
    assert await store.flush()
    assert await in_redis(store, 0) == (2, {b'"k"': b'"confirmed"', b'"gone"': b'"g"', b'"other"': b'"o"'})
    with processing(store, 0):
        assert (store["k"], "gone" in store, store["new"]) == ("in flight", False, "in flight")


async def test_many_keys_are_written_in_chunks_and_read_back(new_store: Callable[..., RedisStore]) -> None:
    store = new_store(store="redis://?chunk=100")
    assert store.config.chunk == 100
    await store.assign({0, 1, 2}, set())
    apply(store, [(n % 3, n // 3, f"key-{n}", n) for n in range(5_000)])
    assert await store.flush()
    apply(store, [(0, 10_000 + n, f"key-{3 * n}", None) for n in range(250)])
    assert await store.flush()
    again = new_store(store="redis://?chunk=100")
    await again.assign({0, 1, 2}, set())
    assert len(again) == 5_000 - 250
    assert sorted(again.items()) == sorted(store.items())


async def test_a_ttl_table_forgets_keys_in_memory_and_in_redis(new_store: Callable[..., RedisStore]) -> None:
    store = new_store("cache", options={"ttl": 1})
    assert store.config.ttl == 1
    await store.assign({0}, set())
    apply(store, [(0, 0, "old", "o")], timestamp=time.time() - 5)
    apply(store, [(0, 1, "fresh", "f")])
    assert list(store.keys()) == ["fresh"]
    assert await store.flush()
    keys = store.layout.partition(0)
    assert await in_redis(store, 0) == (1, {b'"fresh"': b'"f"'})
    deadline_ms = await store.client.zscore(keys.expires, b'"fresh"')
    assert deadline_ms is not None and time.time() * 1000 < deadline_ms <= time.time() * 1000 + 1000
    assert 0 < await store.client.pttl(keys.data) <= 1000
    # read back before the deadline, the key is there; after it, gone from memory and Redis
    reader = new_store("cache", options={"ttl": 1})
    await reader.assign({0}, set())
    assert list(reader.keys()) == ["fresh"]
    await asyncio.sleep(1.2)
    assert await store.flush()
    assert list(store.keys()) == []
    assert await store.client.hlen(keys.data) == 0
    assert new_store("cache", store="redis://?ttl=900").config.ttl == 900


async def test_reads_and_writes_never_wait_for_redis(
    new_store: Callable[..., RedisStore], iso: Isolated, stack: Settings
) -> None:
    async with off_loop(private_redis(stack)) as server:
        store = new_store(settings=dataclasses.replace(iso.settings, redis_url=server.url))
        await store.assign({0, 1, 2}, set())
        apply(store, [(0, n, f"k{n}", n) for n in range(100)])
        assert await store.flush()
        assert await asyncio.to_thread(server.stop)
        with processing(store, 0):
            for n in range(10_000):
                store[f"live-{n}"] = n
            assert [store[f"live-{n}"] for n in (0, 9_999)] == [0, 9_999]
        apply(store, [(0, n, f"k{n}", -n) for n in range(100, 200)])
        assert not await store.flush(), "Redis is down: the flush must fail and keep the changes"
        assert len(store._parts[0].dirty) == 100
        assert await asyncio.to_thread(server.up) == "started"
        assert await store.flush()
        client = redis_client.connect(server.url)
        try:
            keys = store.layout.partition(0)
            assert await client.hget(keys.meta, "offset") == b"199"
            assert await client.hlen(keys.data) == 200
            assert await client.hget(keys.data, '"k150"') == b"-150"
        finally:
            await client.aclose()


async def test_reset_state_removes_the_table_from_redis(new_store: Callable[..., RedisStore]) -> None:
    store, other = new_store("things"), new_store("others")
    for each in (store, other):
        await each.assign({0, 1, 2}, set())
        apply(each, [(p, 0, "k", p) for p in range(3)])
        assert await each.flush()
    await asyncio.to_thread(store.reset_state)  # faust's synchronous hook (faust reset)
    assert len(store) == 0
    assert [copy.offset for copy in (await redis_table(store_settings(store), "things", 3)).values()] == [None] * 3
    assert [copy.offset for copy in (await redis_table(store_settings(store), "others", 3)).values()] == [0] * 3
    assert await other.wipe() == 6  # data and meta of three partitions


async def test_faust_reset_wipes_every_table_of_the_app(new_store: Callable[..., RedisStore], iso: Isolated) -> None:
    for name in ("session_state", "tool_runs"):
        store = new_store(name)
        await store.assign({0, 1, 2}, set())
        apply(store, [(1, 0, "s-1", {"last_seq": 1})])
        assert await store.flush()
    faust_cli = Path(sys.executable).parent / "faust"
    done = await asyncio.create_subprocess_exec(
        str(faust_cli), "-A", "app", "reset", cwd=ROOT, env=iso.env(), stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(done.communicate(), 120)
    assert done.returncode == 0, stderr.decode()[-3000:]
    for name in ("session_state", "tool_runs"):
        assert (await redis_table(iso.settings, name, 3))[1].offset is None


async def test_the_store_is_found_by_url_and_configured_from_the_app(new_store: Callable[..., RedisStore]) -> None:
    assert faust.stores.by_url("redis://") is RedisStore
    store = new_store()
    settings = store_settings(store)
    assert (store.config.redis_url, store.config.prefix) == (settings.redis_url, settings.redis_prefix)
    assert store.config.flush_interval == settings.table_flush_interval_seconds
    assert store.layout.partition(2).data == f"{settings.redis_prefix}{settings.app_id}:table:{{things:2}}:data"
    elsewhere = new_store("other", store="redis://127.0.0.1:6379/3?ttl=5&socket_timeout=3&flush_interval=1")
    assert elsewhere.config.redis_url == "redis://127.0.0.1:6379/3?socket_timeout=3"
    assert (elsewhere.config.ttl, elsewhere.config.flush_interval) == (5, 1)


async def test_global_tables_are_refused(iso: Isolated) -> None:
    app = create_app(iso.settings)
    table = app.GlobalTable("everywhere", default=None, store="redis://")
    with pytest.raises(ImproperlyConfigured, match="partitioned tables only"):
        table.data  # noqa: B018 - building the store is what is tested
