"""The local stack: one idempotent command, reuse of what answers, a clear error for a foreign port."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from deploy.localstack.base import Component, WrongService, free_port, pid_alive, port_open
from deploy.localstack.kafka_broker import KafkaBroker
from deploy.localstack.postgres_server import PostgresServer
from deploy.localstack.redis_server import RedisServer
from tests.support.private import private_redis

ROOT = Path(__file__).resolve().parent.parent


def free_pair() -> int:
    """A port whose successor is free too (Kafka's controller listens on port + 1).

    Drawn below Linux's ephemeral range (32768-60999), where ``free_port()`` picks the other servers' ports,
    so the controller port cannot be handed to one of them meanwhile.
    """
    while True:
        port = random.randrange(20000, 30000)
        if not port_open("127.0.0.1", port) and not port_open("127.0.0.1", port + 1):
            return port


def stack_cli(verb: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.localstack", verb],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def lines_by_component(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if line.strip()}


@pytest.fixture
def private_stack_env(stack: Settings) -> Iterator[dict[str, str]]:
    home = stack.stack_dir / "test-instances" / f"stack-{uuid.uuid4().hex[:8]}"
    pg_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOMA_")}
    env.update(
        SOMA_STACK_DIR=str(home),
        SOMA_CACHE_DIR=str(stack.cache_dir),
        SOMA_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_pair()}",
        SOMA_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        SOMA_POSTGRES_DSN=f"postgresql://somaagent:somaagent@127.0.0.1:{pg_port}/somaagent",
    )
    yield env
    subprocess.run([sys.executable, "-m", "deploy.localstack", "down"], cwd=ROOT, env=env, capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


def test_stack_up_twice_starts_nothing_twice_and_down_leaves_nothing(
    private_stack_env: dict[str, str],
) -> None:
    first = lines_by_component(stack_cli("up", private_stack_env))
    assert set(first) == {"kafka", "redis", "postgres"}
    assert all(" started on " in line for line in first.values()), first

    home = Path(private_stack_env["SOMA_STACK_DIR"])
    pids = {name: int((home / name / f"{name}.pid").read_text().split()[0]) for name in ("kafka", "redis")}
    pids["postgres"] = int((home / "postgres" / "data" / "postmaster.pid").read_text().split()[0])

    second = lines_by_component(stack_cli("up", private_stack_env))
    assert all(" started " not in line for line in second.values()), second
    assert all(" running on " in line for line in second.values()), second
    status = lines_by_component(stack_cli("status", private_stack_env))
    for name, pid in pids.items():
        assert f"up (started by the stack, pid {pid}" in status[name]

    down = lines_by_component(stack_cli("down", private_stack_env))
    assert all(line.endswith("stopped") for line in down.values()), down
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} pid {pid} still running"
    kafka_port = int(private_stack_env["SOMA_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1])
    for port in (kafka_port, kafka_port + 1):
        assert not port_open("127.0.0.1", port)
    again = lines_by_component(stack_cli("down", private_stack_env))
    assert all(line.endswith("not started by the stack") for line in again.values()), again


def test_a_server_already_answering_is_reused_and_never_stopped(
    stack: Settings, private_stack_env: dict[str, str]
) -> None:
    with private_redis(stack) as redis:
        private_stack_env["SOMA_REDIS_URL"] = redis.url
        up = lines_by_component(stack_cli("up", private_stack_env))
        assert " reused on " in up["redis"], up
        down = lines_by_component(stack_cli("down", private_stack_env))
        assert down["redis"].endswith("not started by the stack")
        assert redis.answers()


@pytest.fixture
def foreign_port() -> Iterator[int]:
    """A port held by a server that speaks HTTP, not Redis, PostgreSQL or Kafka."""
    listener = socket.create_server(("127.0.0.1", 0))
    port: int = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                time.sleep(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    listener.close()


@pytest.mark.parametrize("kind", ["redis", "postgres", "kafka"])
def test_a_port_held_by_another_service_is_a_clear_error(
    stack: Settings, tmp_path: Path, foreign_port: int, kind: str
) -> None:
    component: Component = {
        "redis": lambda: RedisServer("127.0.0.1", foreign_port, tmp_path),
        "postgres": lambda: PostgresServer(
            "127.0.0.1",
            foreign_port,
            tmp_path,
            f"postgresql://somaagent:x@127.0.0.1:{foreign_port}/somaagent",
        ),
        "kafka": lambda: KafkaBroker("127.0.0.1", foreign_port, tmp_path, stack.cache_dir),
    }[kind]()
    with pytest.raises(WrongService) as failure:
        component.up()
    message = str(failure.value)
    assert message.startswith(f"{kind}: 127.0.0.1:{foreign_port}")
    assert not component.pid_path.exists()
