"""Jaeger v2 (built once per machine, deploy/localstack/go_tools.py): an OTLP receiver that keeps traces in memory
and answers Jaeger's query API, for the traces test and for anyone who wants to look at a local worker's traces
(``make run TRACES=1``).

``port`` is the query API's (``/api/traces/{id}``, ``/api/services``); the OTLP/HTTP receiver is on
``otlp_port`` (workers export to ``http://host:otlp_port``); each port is the caller's choice, so several
instances live side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

from deploy.localstack.base import HttpServer, WrongService, free_port
from deploy.localstack.go_tools import JAEGER


class JaegerServer(HttpServer):
    name = "jaeger"
    start_seconds = 60.0

    def __init__(
        self, host: str, port: int, home: Path, cache_dir: Path, otlp_port: int, max_traces: int = 100_000
    ) -> None:
        super().__init__(host, port, home, cache_dir)
        self.otlp_port = otlp_port
        self.max_traces = max_traces

    @property
    def otlp_endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT is set to for a worker that exports here."""
        return f"http://{self.host}:{self.otlp_port}"

    @property
    def config_path(self) -> Path:
        return self.home / "jaeger.yaml"

    def answers(self) -> bool:
        body = self.get_json("/api/services", timeout=2)
        if not isinstance(body, dict) or "data" not in body:
            raise WrongService(f"jaeger: {self.host}:{self.port} does not answer Jaeger's query API")
        return True

    def install(self) -> None:
        JAEGER.require(self.cache_dir)

    def prepare(self) -> None:
        host = self.host
        config = {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                # its own metrics would take port 8888: off
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            },
            "extensions": {
                "jaeger_query": {
                    "storage": {"traces": "memory"},
                    "http": {"endpoint": f"{host}:{self.port}"},
                    "grpc": {"endpoint": f"{host}:{free_port()}"},
                },
                "jaeger_storage": {"backends": {"memory": {"memory": {"max_traces": self.max_traces}}}},
            },
            "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"{host}:{self.otlp_port}"}}}},
            # spans are stored within 100 ms of their arrival (the default waits up to 200 ms)
            "processors": {"batch": {"timeout": "100ms"}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memory"}},
        }
        # JSON is YAML: no YAML writer needed
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def launch(self) -> None:
        self.spawn([str(JAEGER.require(self.cache_dir)), "--config", str(self.config_path)])
