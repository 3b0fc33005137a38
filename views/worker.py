"""``GET /v1/worker``: what this worker holds: its partitions, open streams and watched sessions."""

from __future__ import annotations

import os
from typing import ClassVar

from faust.web import Request, Response

from app import app
from views.api_doc import Operations
from views.base import ApiView
from views.connections import registry
from views.server import GuardedWeb


@app.page("/v1/worker")
class WorkerInfo(ApiView):
    openapi: ClassVar[Operations] = {
        "get": {
            "summary": "This worker's partitions, streams and watched sessions",
            "responses": {
                "200": {
                    "description": "worker state",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }

    async def get(self, request: Request) -> Response:
        try:
            assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in app.consumer.assignment())
        except Exception:  # the consumer is not started yet
            assigned = []
        return self.json(
            {
                "pid": os.getpid(),
                "app_id": app.settings.app_id,
                "web_port": app.conf.web_port,
                "assigned": assigned,
                "open_streams": len(registry),
                "watched_sessions": app.resources.feed_hub().watched,
                "publishes_in_flight": app.resources.publishes_in_flight,
                # seconds: this worker's storage lag, the highest another worker reported, messages refused for it
                "storage_lag": {
                    "local_s": round(app.storage_lag.local(), 3),
                    "others_s": round(app.storage_lag.others, 3),
                    "refused": app.storage_lag.refused,
                },
                # requests refused by the rate limits, and let through because Redis did not answer
                "rate_limits": {"refused": app.rate_limits.refused, "failed_open": app.rate_limits.failed_open},
                # authentication: tokens refused; policy: decisions asked and denied
                "auth": {
                    "refused": app.auth.refused,
                    "policy_asked": app.policy.asked,
                    "policy_denied": app.policy.denied,
                },
                # HTTP connections: open now, the limit, refused and idle ones closed to make room since start
                "connections": app.web.connection_counts() if isinstance(app.web, GuardedWeb) else None,
            }
        )
