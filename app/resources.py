"""Shared connections of one worker: a Redis client, a Postgres pool and a Kafka metadata client."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import aiopg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaClient
from mode import Service

from app import redis_client, tracing
from app.feed_hub import FeedHub
from app.settings import Settings


class Resources(Service):
    """Created once per worker, closed on shutdown; never opened per request.

    Nothing here fails start-up when a server is down: connections are made on use, so a worker comes up
    degraded (``/health`` says which part) and recovers by itself when the server returns.
    """

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.redis: aioredis.Redis = redis_client.connect(
            settings.redis_url,
            # /health bounds its own ping by SOMA_HEALTH_TIMEOUT_SECONDS
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
            retry_on_timeout=False,
        )
        self._pg_pool: aiopg.Pool | None = None
        self._pg_lock = asyncio.Lock()
        # held while an agent stores a batch and publishes it to the session feed (see agents/pipeline.py)
        self.store_lock = asyncio.Lock()
        self._kafka: AIOKafkaClient | None = None
        self._kafka_bootstrapped = False
        self._http: aiohttp.ClientSession | None = None
        self._hub: FeedHub | None = None
        # client publishes waiting for the broker's ack (app/publish.py sheds load past a limit)
        self.publishes_in_flight = 0
        self.overloaded = 0  # messages refused 503 overloaded: too many waiting for the broker

    def feed_hub(self) -> FeedHub:
        """The worker's session-feed subscription, created on first use on the running loop."""
        if self._hub is None:
            self._hub = FeedHub(self.settings)
        return self._hub

    def http(self) -> aiohttp.ClientSession:
        """The worker's HTTP client (tools), created on first use on the running loop."""
        if self._http is None or self._http.closed:
            # a span per outgoing request when traces are on
            self._http = aiohttp.ClientSession(trace_configs=tracing.client_trace_configs())
        return self._http

    async def postgres(self) -> aiopg.Pool:
        """The Postgres pool, created on first use (minsize 0: no connection is held open at start)."""
        if self._pg_pool is None:
            async with self._pg_lock:
                if self._pg_pool is None:
                    self._pg_pool = await aiopg.create_pool(
                        self.settings.postgres_dsn,
                        minsize=0,
                        maxsize=self.settings.postgres_pool_max,
                        timeout=self.settings.health_timeout_seconds * 5,
                        pool_recycle=300,
                    )
        return self._pg_pool

    async def kafka_metadata(self) -> int:
        """Ask the cluster for its metadata; returns the number of brokers that answered."""
        if self._kafka is None:
            self._kafka = AIOKafkaClient(
                bootstrap_servers=self.settings.kafka_bootstrap,
                **self.settings.kafka_security(),
                request_timeout_ms=int(self.settings.health_timeout_seconds * 1000),
                client_id=f"{self.settings.app_id}-health",
            )
        client = self._kafka
        if not self._kafka_bootstrapped:
            await client.bootstrap()
            self._kafka_bootstrapped = True
        metadata = await client.fetch_all_metadata()
        return len(metadata.brokers())

    async def on_stop(self) -> None:
        if self._hub is not None:
            await self._hub.close()
        if self._http is not None:
            await self._http.close()
        await self.redis.aclose()
        if self._pg_pool is not None:
            self._pg_pool.close()
            await self._pg_pool.wait_closed()
        if self._kafka is not None:
            await self._kafka.close()
