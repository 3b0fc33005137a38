"""Rate limits shared by every worker: GCRA in one atomic Redis script, per caller and per client address.

Each limit is a rate (requests per second) and a burst (requests at once). The generic cell rate algorithm keeps
one timestamp per key (the "theoretical arrival time"): a request is allowed while that time stays within
``burst`` emission intervals of now, and each allowed request moves it one interval on. The script checks all the
request's keys (its caller's and its address's) and charges them only if every one allows, on Redis's clock, so
any number of workers share one limit exactly.

An answer carries the IETF headers (draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Policy`` (the limit)
and ``RateLimit`` (what remains, and in how many seconds the bucket is full again); a refusal is 429
``rate_limited`` with ``Retry-After``. If Redis does not answer, limiting fails open (the request goes on,
counted in ``failed_open`` and logged at most every 10 s): authentication never does.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

from app.errors import ApiError

log = logging.getLogger(__name__)

# KEYS: the limiters; ARGV: per key its emission interval and burst window (microseconds), then the cost.
# Returns {allowed (0/1), the smallest remaining count, microseconds until that key is full again,
# microseconds to wait before retrying (0 when allowed)}.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[#ARGV])
local tats, remaining, reset, wait = {}, math.huge, 0, 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  if new_tat - now > window then
    wait = math.max(wait, new_tat - now - window)
  end
  tats[i] = new_tat
  remaining = math.min(remaining, math.floor((window - (new_tat - now)) / interval))
  reset = math.max(reset, new_tat - now)
end
if wait > 0 then
  return {0, 0, reset, wait}
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', math.max(1, math.ceil((tats[i] - now) / 1000)))
end
return {1, remaining, reset, 0}
"""


class RateLimited(ApiError):
    code = "rate_limited"


@dataclass(frozen=True)
class Limit:
    name: str  # the policy's name in the headers: "caller" or "address"
    per_second: float
    burst: int

    @property
    def interval_us(self) -> int:
        return max(1, round(1_000_000 / self.per_second))

    @property
    def window_us(self) -> int:
        return self.interval_us * self.burst


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: Limit | None  # the tightest limit checked (None: nothing was checked)
    remaining: int = 0
    reset_seconds: float = 0.0
    retry_after_seconds: float = 0.0

    def headers(self) -> dict[str, str]:
        if self.limit is None:
            return {}
        limit = self.limit
        window = max(1, math.ceil(limit.burst / limit.per_second))
        return {
            "RateLimit-Policy": f'"{limit.name}";q={limit.burst};w={window}',
            "RateLimit": f'"{limit.name}";r={max(0, self.remaining)};t={math.ceil(self.reset_seconds)}',
        }


class RateLimiter:
    def __init__(self, client: aioredis.Redis, prefix: str, caller: Limit | None, address: Limit | None) -> None:
        self.client = client
        self.prefix = prefix
        self.caller = caller
        self.address = address
        self._script: AsyncScript = client.register_script(GCRA)
        self.refused = 0
        self.failed_open = 0
        self._last_warning = 0.0

    @property
    def enabled(self) -> bool:
        return self.caller is not None or self.address is not None

    async def check(self, caller: str | None, address: str | None, cost: int = 1) -> Verdict:
        """Charge ``cost`` to the caller's and the address's limits if both allow it (either may be None)."""
        checked = [
            (limit, f"{self.prefix}ratelimit:{limit.name}:{who}")
            for limit, who in ((self.caller, caller), (self.address, address))
            if limit is not None and who
        ]
        if not checked:
            return Verdict(True, None)
        args: list[int] = []
        for limit, _ in checked:
            args += [limit.interval_us, limit.window_us]
        try:
            allowed, remaining, reset_us, wait_us = await self._script(
                keys=[key for _, key in checked], args=[*args, cost]
            )
        except (redis.exceptions.RedisError, OSError) as exc:
            self.failed_open += 1
            if time.monotonic() - self._last_warning > 10:
                self._last_warning = time.monotonic()
                log.warning("rate limits unavailable (%r): requests are let through (fail open)", exc)
            return Verdict(True, None)
        tightest = min((limit for limit, _ in checked), key=lambda limit: limit.per_second)
        verdict = Verdict(bool(allowed), tightest, int(remaining), reset_us / 1e6, wait_us / 1e6)
        if not verdict.allowed:
            self.refused += 1
        return verdict
