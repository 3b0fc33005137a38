"""``Idempotency-Key``: a retried POST gets the first answer and enqueues nothing new (kept in Redis)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import redis.exceptions

from app.auth import Principal
from app.errors import ApiError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from app.faust_app import SomaApp

KEY = re.compile(r"[\x21-\x7e]{1,255}")


class IdempotencyError(ApiError):
    code = "idempotency_in_progress"


def fingerprint(method: str, path: str, body: Any) -> str:
    canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def once(
    app: SomaApp,
    caller: Principal,
    key: str,
    print_: str,
    make: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
    longest: float = 0.0,
) -> tuple[int, dict[str, Any]]:
    """The stored answer for the caller's ``key``, or ``make()``'s, stored for ``SOMA_IDEMPOTENCY_TTL_SECONDS``.

    Keys are the caller's own (tenant and subject): two callers using one key never see each other's answer.
    """
    if not KEY.fullmatch(key):
        raise ApiError("Idempotency-Key must be 1-255 visible ASCII characters", code="invalid_idempotency_key")
    client = app.resources.redis
    owner = caller.caller()
    scope = hashlib.sha256(owner.encode()).hexdigest()[:32] + ":" if owner else ""
    name = f"{app.settings.redis_prefix}idempotency:{scope}{key}"
    ttl = app.settings.idempotency_ttl_seconds
    # a worker that dies mid-request must not block the key for a day: the reservation outlives only the
    # longest a request can take (two publish timeouts, and ``longest`` seconds of the request's own work)
    pending_ttl = max(1, int(2 * app.settings.kafka_publish_timeout_seconds + longest) + 1)
    try:
        reserved = await client.set(name, json.dumps({"fingerprint": print_, "pending": True}), nx=True, ex=pending_ttl)
        if not reserved:
            raw = await client.get(name)
            if raw is not None:
                return _replay(json.loads(raw), print_)
            reserved = await client.set(
                name, json.dumps({"fingerprint": print_, "pending": True}), nx=True, ex=pending_ttl
            )
            if not reserved:
                raise IdempotencyError("a request with this Idempotency-Key is being processed")
    except redis.exceptions.RedisError as exc:
        # without the record, a retry could enqueue twice: refuse rather than guess
        raise ApiError(
            "idempotency records are unavailable; retry later",
            code="idempotency_unavailable",
            retry_after=1,
        ) from exc
    try:
        status, body = await make()
    except BaseException:
        await _forget(client, name)
        raise
    record = {"fingerprint": print_, "status": status, "body": body}
    try:
        await client.set(name, json.dumps(record), ex=ttl)
    except redis.exceptions.RedisError as exc:
        # the message is enqueued; a retry would carry the same (key-derived) event id and be stored once
        log.warning("idempotency record %s not written (%r): a retry is deduplicated by its event id", name, exc)
    return status, body


def _replay(record: dict[str, Any], print_: str) -> tuple[int, dict[str, Any]]:
    if record.get("fingerprint") != print_:
        raise ApiError("this Idempotency-Key was used with another request", code="idempotency_key_reused")
    if record.get("pending"):
        raise IdempotencyError("a request with this Idempotency-Key is being processed")
    return int(record["status"]), record["body"]


async def _forget(client: Any, name: str) -> None:
    try:
        await client.delete(name)
    except redis.exceptions.RedisError as exc:
        # its pending mark expires with SOMA_IDEMPOTENCY_TTL_SECONDS; until then a retry gets 409 in progress
        log.warning("idempotency record %s not removed after a failed request (%r)", name, exc)
