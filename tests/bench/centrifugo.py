"""Centrifugo v6 as the benchmarks' peer: the pinned binary built on demand, run on a free loopback port."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import redis

from deploy.localstack.base import free_port, tail
from tests.bench.loadgen import go

VERSION = "v6.9.1"
HOME = Path.home() / ".cache" / "somaagent01" / "tools" / f"centrifugo-{VERSION}"
MODULE = f"github.com/centrifugal/centrifugo/v6@{VERSION}"
HISTORY_SIZE = 1000
HISTORY_TTL = "300s"


def binary(build: bool) -> Path:
    """The pinned Centrifugo; built with ``go install`` (about 10 minutes on 2 cores) when missing and ``build``."""
    path = HOME / "centrifugo"
    if path.exists():
        return path
    if not build:
        raise FileNotFoundError(f"{path} is missing; build it with: GOBIN={HOME} go install {MODULE}")
    done = subprocess.run(
        [go(), "install", MODULE],
        env={**os.environ, "GOBIN": str(HOME)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(f"go install {MODULE} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return path


class Centrifugo:
    """One Centrifugo node with history on every channel; clients and the HTTP API need no credentials."""

    def __init__(
        self,
        engine: Literal["memory", "redis"] = "memory",
        redis_url: str = "redis://127.0.0.1:6379",
        log_path: Path | None = None,
        build: bool = True,
    ) -> None:
        self.engine = engine
        self.redis_url = redis_url
        self.redis_prefix = f"cfbench-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.build = build
        self.home = Path(tempfile.mkdtemp(prefix="centrifugo-"))
        self.log_path = log_path or self.home / "centrifugo.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def config(self) -> dict[str, Any]:
        engine: dict[str, Any] = {"type": self.engine}
        if self.engine == "redis":
            # a prefix of our own, so parallel runs and leftovers never share keys or PUB/SUB channels
            engine["redis"] = {"address": [self.redis_url], "prefix": self.redis_prefix}
        return {
            "http_server": {"address": "127.0.0.1", "port": self.port},
            "log": {"level": "info", "file": str(self.log_path)},
            "engine": engine,
            # insecure: anonymous connect and subscribe to any channel, like our unauthenticated stream
            "client": {"insecure": True},
            "http_api": {"insecure": True},
            "channel": {
                "without_namespace": {
                    "history_size": HISTORY_SIZE,
                    "history_ttl": HISTORY_TTL,
                    # offsets in every publication and recovery on resubscribe, as our seq / ?after=
                    "force_recovery": True,
                }
            },
            "health": {"enabled": True},
            "admin": {"enabled": False},
            "usage_stats": {"disabled": True},
        }

    def start(self, timeout: float = 30.0) -> Centrifugo:
        config = self.home / "config.json"
        config.write_text(json.dumps(self.config(), indent=2))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with (self.home / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(binary(self.build)), "--config", str(config)],
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"centrifugo exited with {self.proc.returncode}:\n{self.log()}")
            health = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                health.request("GET", "/health")
                if health.getresponse().status == 200:
                    return self
            except (OSError, http.client.HTTPException):
                pass
            finally:
                health.close()
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"centrifugo did not answer /health within {timeout} s:\n{self.log()}")

    def log(self, lines: int = 40) -> str:
        return f"{tail(self.home / 'stdout.log', lines)}\n{tail(self.log_path, lines)}"

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.engine == "redis":
            client = redis.Redis.from_url(self.redis_url)
            try:
                keys = list(client.scan_iter(match=f"{self.redis_prefix}*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()

    def close(self) -> None:
        """Stop, then remove the config dir (with the log, unless ``log_path`` pointed elsewhere)."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Centrifugo:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
