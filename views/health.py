"""``GET /health``: Kafka, Redis and Postgres checked for real; 200 only when every one answers. With the
responder on, its model server is checked and reported too (``impaired`` when down, still 200); with voice
messages on, the speech server likewise.
``GET /health/live``: 200 while the worker's event loop serves requests, whatever its dependencies do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from faust.web import Request, Response

from app import app
from views.api_doc import Operations, json_answer
from views.base import ApiView


async def _kafka() -> dict[str, Any]:
    return {"brokers": await app.resources.kafka_metadata()}


async def _redis() -> dict[str, Any]:
    await app.resources.redis.ping()
    return {}


async def _postgres() -> dict[str, Any]:
    pool = await app.resources.postgres()
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT 1")
        await cur.fetchone()
    return {}


async def _slm() -> dict[str, Any]:
    url = app.settings.slm_url.rstrip("/")
    async with app.resources.http().get(f"{url}/v1/models") as response:
        if response.status != 200:
            raise ConnectionError(f"GET /v1/models answered {response.status}")
        body = await response.json()
    return {"models": [model.get("id") for model in body.get("data", [])][:10]}


async def _stt() -> dict[str, Any]:
    # an OpenAI-compatible speech server has no standard health path: faster-whisper-server's /health, and any
    # answer below 500 from another server, mean it is there
    url = app.settings.stt_url.rstrip("/")
    async with app.resources.http().get(f"{url}/health") as response:
        if response.status >= 500:
            raise ConnectionError(f"GET /health answered {response.status}")
    return {}


CHECKS: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
    "kafka": _kafka,
    "redis": _redis,
    "postgres": _postgres,
}
# reported when configured, but a worker without them still takes and stores messages: 200 all the same
OPTIONAL: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
    name: check
    for name, check, url in (("slm", _slm, app.settings.slm_url), ("stt", _stt, app.settings.stt_url))
    if url
}


async def _run(check: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        details = await asyncio.wait_for(check(), timeout=app.settings.health_timeout_seconds)
    except Exception as exc:
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"status": "ok", "latency_ms": round((time.perf_counter() - began) * 1000, 2), **details}


@app.page("/health")
class Health(ApiView):
    public = True
    openapi: ClassVar[Operations] = {
        "get": {
            "summary": "Kafka, Redis and Postgres checked for real",
            "responses": {
                "200": json_answer("Health", "every component answers"),
                "503": {
                    "description": "a component is down (named in failing); or error too_many_connections",
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/Health"},
                                    {"$ref": "#/components/schemas/Error"},
                                ]
                            }
                        }
                    },
                },
            },
        }
    }

    async def get(self, request: Request) -> Response:
        checks = {**CHECKS, **OPTIONAL}
        results = await asyncio.gather(*(_run(check) for check in checks.values()))
        components = dict(zip(checks, results, strict=True))
        down = [name for name in CHECKS if components[name]["status"] != "ok"]
        impaired = [name for name in OPTIONAL if components[name]["status"] != "ok"]
        status = "ok" if not (down or impaired) else ("down" if len(down) == len(CHECKS) else "degraded")
        body: dict[str, Any] = {"status": status, "components": components}
        if down:
            body["failing"] = down
        if impaired:
            body["impaired"] = impaired
        return self.json(body, status=200 if not down else 503)


@app.page("/health/live")
class Live(ApiView):
    """Liveness (the Helm chart's probe): answered by the event loop itself, no dependency is asked. A worker
    whose Kafka, Redis or PostgreSQL is away is not broken (it reconnects on its own, /health says what is
    down): restarting it would only add a rebalance. A worker whose loop is stuck does not answer at all."""

    public = True
    openapi: ClassVar[Operations] = {
        "get": {
            "summary": "The worker's event loop answers (no dependency checked)",
            "responses": {
                "200": {
                    "description": "alive",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"const": "alive"}},
                            }
                        }
                    },
                }
            },
        }
    }

    async def get(self, request: Request) -> Response:
        return self.json({"status": "alive"})
