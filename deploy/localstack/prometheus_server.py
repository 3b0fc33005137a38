"""A Prometheus (the Debian package's) scraping given workers every second: for the metrics test and for
anyone who wants to look at a local worker's metrics over time (``/graph`` on its port)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from deploy.localstack.base import Component, WrongService
from deploy.localstack.go_tools import PROMETHEUS


class PrometheusServer(Component):
    name = "prometheus"
    start_seconds = 60.0

    def __init__(self, host: str, port: int, home: Path, cache_dir: Path, targets: list[str]) -> None:
        """``targets``: ``host:port`` of each worker whose ``/metrics`` it scrapes (job ``soma``)."""
        super().__init__(host, port, home)
        self.cache_dir = cache_dir
        self.targets = targets

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.home / "prometheus.yml"

    def answers(self) -> bool:
        try:
            # an http:// URL made here from the host and port given
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            if exc.code == 503:  # still starting (replaying its write-ahead log)
                return False
            raise WrongService(f"prometheus: {self.host}:{self.port} answered /-/ready with {exc.code}") from exc

    def install(self) -> None:
        PROMETHEUS.require(self.cache_dir)

    def prepare(self) -> None:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "soma", "metrics_path": "/metrics", "static_configs": [{"targets": self.targets}]}
            ],
        }
        # JSON is YAML: no YAML writer needed
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def launch(self) -> None:
        self.spawn(
            [
                str(PROMETHEUS.require(self.cache_dir)),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.home / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--log.level=warn",
            ]
        )
