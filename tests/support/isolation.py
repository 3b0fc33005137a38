"""Each test gets its own topics, consumer group, Redis key prefix and database, on the real servers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import redis
from aiokafka.admin import AIOKafkaAdminClient

from app.settings import Settings
from deploy.localstack.base import pid_alive
from tools import migrate

TEST_DB_PREFIX = "soma_t_"
# every database of a run carries the pid of the process that made it: soma_t_<pid>_<what>
RUN_PREFIX = f"{TEST_DB_PREFIX}{os.getpid()}_"
OWNED = re.compile(re.escape(TEST_DB_PREFIX) + r"(\d+)_")


def base_settings() -> Settings:
    """The settings of the stack the suite runs against (``make test`` starts or reuses it)."""
    return Settings.from_env()


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def admin_execute(dsn: str, *statements: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        cur.execute(statement)
                        break
                    except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.ObjectInUse):
                        # DROP DATABASE ... WITH (FORCE) cannot end an autovacuum worker busy in that database
                        # (it runs as the server's superuser): it is done within moments, then the drop works
                        if not statement.startswith("DROP DATABASE") or time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
    finally:
        conn.close()


def drop_stale_databases(dsn: str) -> None:
    """Remove databases left behind by interrupted runs: those whose process is gone.

    A run beside this one (another clone, a bench) keeps its databases: their process is alive.
    """
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (TEST_DB_PREFIX + "%",))
            names = [name for (name,) in cur.fetchall()]
    finally:
        conn.close()
    for name in names:
        owner = OWNED.match(name)
        if owner is not None and not pid_alive(int(owner.group(1))):
            admin_execute(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrated_template(settings: Settings) -> str:
    """A database with every migration applied, copied (fast) for each test."""
    name = f"{RUN_PREFIX}template"
    admin_execute(settings.postgres_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    migrate.apply(with_database(settings.postgres_dsn, name))
    return name


@dataclasses.dataclass(frozen=True)
class Isolated:
    """Settings of one test: unique names on the shared real servers."""

    settings: Settings
    database: str
    tag: str

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a worker process for these settings (nothing else of ours leaks in, nor the
        caller's OTEL_* variables: a test worker traces only where a test asks it to)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOMA_", "OTEL_"))}
        for field in dataclasses.fields(Settings):
            env["SOMA_" + field.name.upper()] = str(getattr(self.settings, field.name))
        env.update(extra)
        return env

    def topic(self, name: str) -> str:
        return self.settings.topic(name)


@contextmanager
def isolated(base: Settings, template: str, data_dir: Path, **overrides: object) -> Iterator[Isolated]:
    tag = uuid.uuid4().hex[:10]
    database = f"{RUN_PREFIX}{tag}"
    admin_execute(base.postgres_dsn, f'CREATE DATABASE "{database}" TEMPLATE "{template}"')
    settings = dataclasses.replace(
        base,
        app_id=f"soma-test-{tag}",
        topic_prefix=f"t{tag}.",
        redis_prefix=f"t{tag}:",
        postgres_dsn=with_database(base.postgres_dsn, database),
        data_dir=data_dir,
        **overrides,  # type: ignore[arg-type]
    )
    try:
        yield Isolated(settings, database, tag)
    finally:
        admin_execute(base.postgres_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        drop_redis_keys(base.redis_url, settings.redis_prefix)
        # the test's topics and its app's internal ones (changelogs, the assignor's): run in a thread of its
        # own, since this context manager is used from async tests as well
        prefixes = (settings.topic_prefix, f"{settings.app_id}-")
        worker = threading.Thread(target=asyncio.run, args=(drop_topics(base.kafka_bootstrap, prefixes),))
        worker.start()
        worker.join()


async def drop_topics(bootstrap: str, prefixes: tuple[str, ...]) -> None:
    """Delete the topics whose names start with one of ``prefixes`` (a test's own)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        ours = [name for name in await admin.list_topics() if name.startswith(prefixes)]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


def drop_redis_keys(url: str, prefix: str) -> None:
    """Remove what a test left in the shared Redis (table partitions have no TTL)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])
    finally:
        client.close()
