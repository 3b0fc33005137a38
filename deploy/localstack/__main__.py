"""``python -m deploy.localstack up|down|status|tools|run N``: the local stack in one idempotent command."""

from __future__ import annotations

import logging
import sys
import time
from urllib.parse import urlsplit

from app.settings import Settings
from deploy.localstack import workers
from deploy.localstack.base import Component, StackError
from deploy.localstack.go_tools import TOOLS
from deploy.localstack.k8s_schemas import SCHEMA_SETS
from deploy.localstack.kafka_cluster import local_kafka
from deploy.localstack.opa_server import OpaServer
from deploy.localstack.postgres_server import PostgresServer
from deploy.localstack.redis_server import RedisServer
from deploy.localstack.slm_server import SlmServer
from deploy.localstack.stt_server import SttServer


def components(settings: Settings) -> list[Component]:
    home = settings.stack_dir
    found: list[Component] = [
        # one broker, or a cluster of SOMA_KAFKA_BROKERS nodes
        local_kafka(settings),
        RedisServer.from_url(settings.redis_url, home / "redis"),
        PostgresServer.from_dsn(settings.postgres_dsn, home / "postgres"),
    ]
    # OPA only when the settings ask for a policy on this machine (a remote OPA is the operator's)
    if settings.opa_url and urlsplit(settings.opa_url).hostname in LOOPBACK:
        found.append(OpaServer.from_url(settings.opa_url, home / "opa", settings.cache_dir))
    # the responder's model server likewise (make run SLM=1)
    if settings.slm_url and urlsplit(settings.slm_url).hostname in LOOPBACK:
        found.append(SlmServer.from_url(settings.slm_url, home / "slm", settings.cache_dir))
    # and the speech server of voice messages (make run SLM=1 too)
    if settings.stt_url and urlsplit(settings.stt_url).hostname in LOOPBACK:
        found.append(SttServer.from_url(settings.stt_url, home / "stt", settings.cache_dir))
    return found


def build_tools(settings: Settings) -> int:
    """Build every tool that is missing (minutes each, once per machine), then prepare the schema sets (seconds;
    the CRD schemas need controller-gen)."""
    every = (*TOOLS, *SCHEMA_SETS)
    width = max(len(tool.name) for tool in every)
    for tool in every:
        began = time.monotonic()
        try:
            path, built = tool.build(settings.cache_dir)
        except StackError as exc:
            print(f"tools: {tool.name} FAILED: {exc}", file=sys.stderr)
            return 1
        how = f"built in {time.monotonic() - began:.0f} s" if built else "cached"
        print(f"{tool.name:{width}} {tool.version} {how}: {path}")
    return 0


LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# where `make run SLM=1` puts the model server and the speech server (the Makefile's SOMA_SLM_URL, SOMA_STT_URL)
DEFAULT_SLM_URL = "http://127.0.0.1:8081"
DEFAULT_STT_URL = "http://127.0.0.1:8082"
# what `faust -A app stack` offers (run N stays make run's: it runs workers in the foreground)
VERBS = ("status", "up", "down", "tools")


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
        # the model and speech servers `make run SLM=1` started are stopped too, whatever SOMA_*_URL say now
        defaults: list[Component] = [
            SlmServer.from_url(DEFAULT_SLM_URL, settings.stack_dir / "slm", settings.cache_dir),
            SttServer.from_url(DEFAULT_STT_URL, settings.stack_dir / "stt", settings.cache_dir),
        ]
        for default in defaults:
            if not any(type(component) is type(default) for component in stack) and default.ours() is not None:
                stack.append(default)
        for component in reversed(stack):
            print(f"{component.name:9} {'stopped' if component.stop() else 'not started by the stack'}")
        return 0
    if verb == "tools":
        return build_tools(settings)
    if verb == "status":
        for component in stack:
            print(f"{component.name:9} {component.status()}")
        for line in workers.status(settings):
            print(line)
        return 0
    if verb == "run":
        try:
            return workers.run(settings, int(argv[2]) if len(argv) > 2 else 1)
        except (StackError, ValueError) as exc:
            print(f"run: {exc}", file=sys.stderr)
            return 2
    print("usage: python -m deploy.localstack up|down|status|tools|run [N]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
