"""The Redis store's options: from its URL (``redis://host:port/db?ttl=900``), the table's options, the app."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from faust.exceptions import ImproperlyConfigured
from yarl import URL

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_FLUSH_INTERVAL = 0.25
DEFAULT_CHUNK = 10_000
# query parameters the store reads itself; any other is a redis-py connection option
OWN_PARAMETERS = frozenset({"ttl", "flush_interval", "chunk", "prefix"})


@dataclass(frozen=True)
class StoreConfig:
    redis_url: str
    prefix: str
    # seconds a key lives after its last write (None: forever)
    ttl: float | None
    flush_interval: float
    # most changes written by one Redis script call
    chunk: int
    # how long a partition that is given away (or a worker that stops) waits for its last flush
    handoff_timeout: float = 10.0
    # how long an assignment waits for Redis before recovering the partition from the changelog instead
    load_timeout: float = 30.0

    @classmethod
    def resolve(cls, url: URL, app: Any, options: Mapping[str, Any] | None) -> StoreConfig:
        """``redis://`` without a host means the app's own Redis (``SOMA_REDIS_URL``), prefix and interval.

        The app's URL is read from its settings rather than put in the store URL, because faust prints the
        store URL in the worker's banner and a Redis URL may carry a password.
        """
        settings = getattr(app, "settings", None)
        query = url.query
        if url.host:
            redis_url = str(url.with_query({k: v for k, v in query.items() if k not in OWN_PARAMETERS}))
        else:
            redis_url = str(getattr(settings, "redis_url", DEFAULT_REDIS_URL))
        options = options or {}
        ttl_raw = query.get("ttl", options.get("ttl"))
        config = cls(
            redis_url=redis_url,
            prefix=str(query.get("prefix", getattr(settings, "redis_prefix", ""))),
            ttl=_number("ttl", ttl_raw) if ttl_raw not in (None, "", 0, "0") else None,
            flush_interval=_number(
                "flush_interval",
                query.get("flush_interval", getattr(settings, "table_flush_interval_seconds", DEFAULT_FLUSH_INTERVAL)),
            ),
            chunk=int(_number("chunk", query.get("chunk", DEFAULT_CHUNK))),
        )
        if config.flush_interval <= 0 or config.chunk < 1 or (config.ttl is not None and config.ttl <= 0):
            raise ImproperlyConfigured(f"redis store: flush_interval, chunk and ttl must be positive ({url})")
        return config


def _number(name: str, raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"redis store: {name}={raw!r} is not a number") from exc
