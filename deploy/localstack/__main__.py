"""``python -m deploy.localstack up|down|status``: the local stack in one idempotent command."""

from __future__ import annotations

import logging
import sys
import time

from app.settings import Settings
from deploy.localstack.base import Component, StackError
from deploy.localstack.kafka_broker import KafkaBroker
from deploy.localstack.postgres_server import PostgresServer
from deploy.localstack.redis_server import RedisServer


def components(settings: Settings) -> list[Component]:
    home = settings.stack_dir
    return [
        KafkaBroker.from_bootstrap(
            settings.kafka_bootstrap, home / "kafka", settings.cache_dir, settings.topic_partitions
        ),
        RedisServer.from_url(settings.redis_url, home / "redis"),
        PostgresServer.from_dsn(settings.postgres_dsn, home / "postgres"),
    ]


def main(argv: list[str]) -> int:
    verb = argv[1] if len(argv) > 1 else "status"
    # a broker that is still starting makes aiokafka log every refused connection: the wait reports it instead
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    settings = Settings.from_env()
    stack = components(settings)
    if verb == "up":
        for component in stack:
            began = time.monotonic()
            try:
                how = component.up()
            except StackError as exc:
                print(f"stack-up: {component.name} FAILED: {exc}", file=sys.stderr)
                return 1
            print(
                f"{component.name:9} {how} on {component.host}:{component.port} "
                f"({time.monotonic() - began:.1f} s; log {component.log_path})"
            )
        return 0
    if verb == "down":
        for component in reversed(stack):
            print(f"{component.name:9} {'stopped' if component.stop() else 'not started by the stack'}")
        return 0
    if verb == "status":
        for component in stack:
            print(f"{component.name:9} {component.status()}")
        return 0
    print("usage: python -m deploy.localstack up|down|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
