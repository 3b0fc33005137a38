"""``GET /metrics``: this worker's Prometheus metrics (app/metrics.py), in the text exposition format."""

from __future__ import annotations

from typing import Any, ClassVar, cast

from faust.web import Request, Response

from app import app
from app.errors import ApiError
from views.api_doc import Operations
from views.base import ApiView


@app.page("/metrics")
class Metrics(ApiView):
    # like /health: for the scraper, without a token; keep the port off the public network (docs/operations.md)
    public = True
    openapi: ClassVar[Operations] = {
        "get": {
            "summary": "Prometheus metrics of this worker (text exposition format)",
            "responses": {
                "200": {
                    "description": "the metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "404": {
                    "description": "metrics are off (SOMA_METRICS_ENABLED=0): error not_found",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
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
