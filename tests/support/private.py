"""Private servers (Redis, PostgreSQL, Kafka, a Kafka cluster, OPA, Prometheus, Jaeger) for tests that stop,
restart or reconfigure them (the shared ones stay up)."""

from __future__ import annotations

import contextlib
import random
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from app.settings import Settings
from deploy.localstack.base import Component, free_port, port_open
from deploy.localstack.jaeger_server import JaegerServer
from deploy.localstack.kafka_broker import KafkaBroker
from deploy.localstack.opa_server import OpaServer
from deploy.localstack.postgres_server import PostgresServer
from deploy.localstack.prometheus_server import PrometheusServer
from deploy.localstack.redis_server import RedisServer
from deploy.localstack.slm_server import SlmServer
from deploy.localstack.stt_server import SttServer

C = TypeVar("C", bound=Component)
# the logs of the model and speech servers, kept in artifacts/logs: they say what a reply or a transcript met
LOGS = Path(__file__).resolve().parents[2] / "artifacts" / "logs"
KEPT_LOGS = {"slm", "stt"}


@contextmanager
def _running(settings: Settings, kind: str, make: Callable[[Path], C]) -> Iterator[C]:
    """``make(home)`` started in a home of its own under the stack dir (not pytest's 0700 tmp dir: the postgres
    user must reach its data directory); stopped and removed afterwards."""
    home = settings.stack_dir / "test-instances" / f"{kind}-{uuid.uuid4().hex[:8]}"
    server = make(home)
    server.up()
    try:
        yield server
    finally:
        server.stop()
        if kind in KEPT_LOGS:  # its log outlives it, beside the workers' (CI keeps artifacts/)
            LOGS.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copyfile(server.log_path, LOGS / f"{home.name}.log")
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def private_redis(settings: Settings) -> Iterator[RedisServer]:
    """A Redis of the test's own (an async test enters it with ``off_loop``: starting it blocks)."""
    with _running(settings, "redis", lambda home: RedisServer("127.0.0.1", free_port(), home)) as server:
        yield server


@contextmanager
def private_postgres(settings: Settings) -> Iterator[PostgresServer]:
    """A PostgreSQL of the test's own (an async test enters it with ``off_loop``: starting it blocks)."""
    port = free_port()
    dsn = f"postgresql://somaagent:somaagent@127.0.0.1:{port}/somaagent"
    with _running(settings, "postgres", lambda home: PostgresServer("127.0.0.1", port, home, dsn)) as server:
        yield server


def free_ports_in_a_row(count: int) -> int:
    """The first of ``count`` consecutive ports that nothing listens on."""
    while True:
        port = random.randrange(20000, 30000)
        if not any(port_open("127.0.0.1", port + n) for n in range(count)):
            return port


@contextmanager
def private_kafka(settings: Settings, scram: tuple[str, str] | None = None) -> Iterator[KafkaBroker]:
    """A Kafka broker of the test's own, optionally with a SCRAM listener; it needs three ports in a row
    (client, controller, SASL), so they are chosen together."""
    port = free_ports_in_a_row(3)
    with _running(
        settings, "kafka", lambda home: KafkaBroker("127.0.0.1", port, home, settings.cache_dir, scram=scram)
    ) as broker:
        yield broker


@contextmanager
def private_prometheus(settings: Settings, targets: list[str]) -> Iterator[PrometheusServer]:
    """A Prometheus of the test's own scraping ``targets`` (host:port) every second."""
    with _running(
        settings,
        "prometheus",
        lambda home: PrometheusServer("127.0.0.1", free_port(), home, settings.cache_dir, targets),
    ) as server:
        yield server


@contextmanager
def private_opa(settings: Settings) -> Iterator[OpaServer]:
    """The project's policy in an OPA of the test's own (its binary built by ``make tools``)."""
    with _running(
        settings, "opa", lambda home: OpaServer("127.0.0.1", free_port(), home, settings.cache_dir)
    ) as server:
        yield server


@contextmanager
def private_jaeger(settings: Settings) -> Iterator[JaegerServer]:
    """A Jaeger of the test's own (its binary built by ``make tools``): OTLP/HTTP in, the query API out."""
    with _running(
        settings,
        "jaeger",
        lambda home: JaegerServer("127.0.0.1", free_port(), home, settings.cache_dir, otlp_port=free_port()),
    ) as server:
        yield server


@contextmanager
def private_slm(settings: Settings, threads: int = 1) -> Iterator[SlmServer]:
    """llama.cpp's server with the small model, of the test's own (built by ``make tools``); one thread by
    default: ggml's threads spin while they wait for each other, which a busy suite pays for (the bench asks
    for two, as ``make run SLM=1`` runs it)."""
    with _running(
        settings,
        "slm",
        lambda home: SlmServer("127.0.0.1", free_port(), home, settings.cache_dir, threads=threads),
    ) as server:
        yield server


@contextmanager
def private_stt(settings: Settings) -> Iterator[SttServer]:
    """faster-whisper-server with Whisper tiny.en, of the test's own (installed by ``make tools``)."""
    with _running(
        settings, "stt", lambda home: SttServer("127.0.0.1", free_port(), home, settings.cache_dir)
    ) as server:
        yield server
