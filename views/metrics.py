"""``GET /metrics``: this worker's Prometheus metrics (app/metrics.py), in the text exposition format."""

from __future__ import annotations

from typing import Any, ClassVar, cast

from faust.web import Request, Response

from app import app
from app.errors import ApiError
from views.api_doc import Operations, errors
from views.base import ApiView


@app.page("/metrics")
class Metrics(ApiView):
    # like /health: for the scraper, without a token; keep the port off the public network (docs/operations.md)
    public = True
    openapi: ClassVar[Operations] = {
        "get": {
            "summary": "Prometheus metrics of this worker (text exposition format)",
            "responses": {
                # Prometheus' text exposition format, what a scraper reads; every error is the JSON envelope
                "200": {
                    "description": "the metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                # metrics off (SOMA_METRICS_ENABLED=0): the service's error envelope, code not_found
                **errors("404"),
            },
        }
    }

    async def get(self, request: Request) -> Response:
        metrics = app.metrics
        if not metrics.enabled:
            raise ApiError("metrics are off on this worker (SOMA_METRICS_ENABLED=0)", code="not_found")
        metrics.collect(app)
        content, headers = metrics.render(cast(Any, request.headers).getall("Accept", []))
        return self.bytes(content, headers=headers)
