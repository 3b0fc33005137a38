"""Redis clients of the service: redis-py's, told its own version so that no new connection reads files.

Unless it is given its version, redis-py looks it up in its package's metadata (``importlib.metadata``: a
stat of every ``sys.path`` entry) for every connection it opens, on the event loop: a blocking call per
connection, found by the tests' blockbuster check (tests/conftest.py).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.driver_info import DriverInfo

DRIVER: dict[str, Any] = {"driver_info": DriverInfo(name="redis-py", lib_version=redis.__version__)}


def connect(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client of ``url`` (connections made on use)."""
    client: aioredis.Redis = aioredis.Redis.from_url(url, **DRIVER, **options)
    return client


def connect_sync(url: str, **options: Any) -> redis.Redis:
    """A blocking client of ``url``, for threads and tools."""
    client: redis.Redis = redis.Redis.from_url(url, **DRIVER, **options)
    return client
