"""Authorization by a real Open Policy Agent: ``POST {SOMA_OPA_URL}/v1/data/<path>`` with ``{"input": ...}``.

Fail closed: a decision that is not ``true`` (false, undefined: no ``result``, or not a boolean), an OPA that
answers an error, does not answer within ``SOMA_OPA_TIMEOUT_SECONDS`` or cannot be reached, all deny. Every
deny is logged with OPA's decision id (its decision log has the rest). Decisions are remembered for
``SOMA_OPA_CACHE_SECONDS`` per distinct input (0: every request asks), at most ``CACHED_MAX`` of them.

The input never carries the caller's token or cookie: OPA's decision logs would otherwise hold them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from app.errors import ApiError

log = logging.getLogger(__name__)

CACHED_MAX = 10_000
# request headers OPA never sees
SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


class PolicyDenied(ApiError):
    """The policy did not allow the request (or could not be asked: it fails closed)."""

    code = "policy_denied"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # why, for the log and the 403's message
    decision_id: str | None = None


class Policy:
    """One worker's OPA client; ``enabled`` is False when ``SOMA_OPA_URL`` is unset (then nothing is asked)."""

    def __init__(
        self,
        url: str,
        timeout_seconds: float,
        cache_seconds: float,
        http: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.cache_seconds = cache_seconds
        self._http = http
        self._cache: OrderedDict[str, tuple[float, Decision]] = OrderedDict()
        self.asked = 0
        self.denied = 0

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    async def decide(self, path: str, document: dict[str, Any]) -> Decision:
        """OPA's decision at ``path`` (e.g. ``somastack/allow``) for ``document`` as its input."""
        key = hashlib.sha256(json.dumps([path, document], sort_keys=True, default=str).encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        decision = await self._ask(path, document)
        if self.cache_seconds > 0:
            self._cache[key] = (time.monotonic() + self.cache_seconds, decision)
            if len(self._cache) > CACHED_MAX:
                self._cache.popitem(last=False)
        if not decision.allowed:
            self.denied += 1
            log.warning("policy %s denied (decision %s): %s", path, decision.decision_id, decision.reason)
        return decision

    async def _ask(self, path: str, document: dict[str, Any]) -> Decision:
        self.asked += 1
        try:
            async with asyncio.timeout(self.timeout_seconds):
                async with self._http().post(f"{self.url}/v1/data/{path}", json={"input": document}) as response:
                    if response.status != 200:
                        return Decision(False, f"the policy service answered {response.status}")
                    answer = await response.json(content_type=None)
        except TimeoutError:
            return Decision(False, f"the policy service did not answer within {self.timeout_seconds:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Decision(False, f"the policy service could not be asked ({type(exc).__name__})")
        decision_id = answer.get("decision_id") if isinstance(answer, dict) else None
        if not isinstance(answer, dict) or "result" not in answer:
            return Decision(False, "the policy has no decision for this request (undefined)", decision_id)
        if answer["result"] is not True:
            return Decision(False, "the policy denied this request", decision_id)
        return Decision(True, "allowed", decision_id)


def request_input(method: str, path: str, headers: Any, payload: Any, claims: dict[str, Any]) -> dict[str, Any]:
    """The seed's input shape: ``{"request": {method, path, headers}, "payload", "claims"}``, without secrets."""
    kept = {name.lower(): value for name, value in headers.items() if name.lower() not in SECRET_HEADERS}
    return {"request": {"method": method, "path": path, "headers": kept}, "payload": payload, "claims": claims}
