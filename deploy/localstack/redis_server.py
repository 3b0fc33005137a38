"""Redis for the local stack: append-only persistence on, bound to loopback."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import redis

from deploy.localstack.base import Component, WrongService, require_command


class RedisServer(Component):
    name = "redis"
    start_seconds = 30.0

    def __init__(self, host: str, port: int, home: Path, url: str | None = None) -> None:
        super().__init__(host, port, home)
        self.url = url or f"redis://{host}:{port}/0"

    @classmethod
    def from_url(cls, url: str, home: Path) -> RedisServer:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, home, url)

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except redis.exceptions.BusyLoadingError:
            return False  # Redis, still reading its append-only file into memory: it answers once loaded
        except redis.exceptions.ConnectionError as exc:
            if "Connection refused" in str(exc) or "Error 111" in str(exc):
                raise
            raise WrongService(f"redis: {self.host}:{self.port} does not speak the Redis protocol ({exc})") from exc
        except redis.exceptions.ResponseError as exc:
            raise WrongService(f"redis: {self.host}:{self.port} refused PING ({exc})") from exc
        finally:
            client.close()

    def install(self) -> None:
        require_command("redis-server", "redis-server")

    def launch(self) -> None:
        conf = self.home / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"bind {self.host}",
                    f"port {self.port}",
                    f"dir {self.home}",
                    "daemonize no",
                    # we promise no data loss: every write goes to the append-only file, fsynced each second
                    "appendonly yes",
                    "appendfsync everysec",
                    "save 900 1 300 10 60 10000",
                    "protected-mode yes",
                    "",
                ]
            )
        )
        self.spawn([require_command("redis-server", "redis-server"), str(conf)])
