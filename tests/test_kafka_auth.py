"""The worker on a broker that requires SASL/SCRAM: it authenticates every client, and nobody else gets in.

A private broker (real Kafka, KRaft) with a SASL_PLAINTEXT listener and SCRAM-SHA-512, its user created when
its storage is formatted; the worker is given only that listener.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from app.settings import Settings
from deploy.localstack.kafka_broker import KafkaBroker
from tests.support.client import post_message
from tests.support.db import wait_rows
from tests.support.isolation import Isolated
from tests.support.private import private_kafka
from tests.support.worker import Worker, running

USER = "soma"
PASSWORD = "scram-test-password-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def broker(stack: Settings) -> Iterator[KafkaBroker]:
    with private_kafka(stack, scram=(USER, PASSWORD)) as server:
        yield server


@pytest.fixture(scope="module")
async def worker(iso_module: Isolated, broker: KafkaBroker, artifacts: Path) -> AsyncIterator[Worker]:
    settings = dataclasses.replace(iso_module.settings, kafka_bootstrap=f"127.0.0.1:{broker.sasl_port}")
    env = dataclasses.replace(iso_module, settings=settings).env(
        SOMA_KAFKA_SASL_MECHANISM="SCRAM-SHA-512", SOMA_KAFKA_SASL_USERNAME=USER, SOMA_KAFKA_SASL_PASSWORD=PASSWORD
    )
    async with running(env, artifacts / "logs" / f"kafka-scram-{iso_module.tag}.log") as worker:
        yield worker


async def test_the_worker_authenticates_with_scram_and_stores_what_it_accepts(
    worker: Worker, iso_module: Isolated
) -> None:
    session = f"scram-{uuid.uuid4().hex[:8]}"
    for n in range(3):
        status, answer = await post_message(worker.url, {"session_id": session, "message": f"m{n}"})
        assert status == 202, answer
    rows = await wait_rows(
        iso_module.settings.postgres_dsn,
        "SELECT seq FROM session_events WHERE session_id = %s ORDER BY seq",
        (session,),
        3,
        timeout=90,
    )
    assert [row["seq"] for row in rows] == [1, 2, 3]


@pytest.mark.parametrize("credentials", ["none", "wrong password"])
async def test_the_sasl_listener_refuses_other_clients(broker: KafkaBroker, credentials: str) -> None:
    extra = (
        {}
        if credentials == "none"
        else {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": USER,
            "sasl_plain_password": "not-" + PASSWORD,
        }
    )
    producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{broker.sasl_port}", request_timeout_ms=5000, **extra)
    with pytest.raises((KafkaError, asyncio.TimeoutError, ConnectionError)):
        async with asyncio.timeout(30):
            await producer.start()
            await producer.send_and_wait("forged", b"an assistant.final in someone's session")
    await producer.stop()
