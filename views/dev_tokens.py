"""``POST /dev/token``: a development issuer, on only with ``SOMA_DEV_TOKENS`` (the local tour and the console).

It signs a token with the service's own shared secret for whoever asks: any tenant, any scope. It exists so that
a person can try the console with authentication on; a deployment never turns it on (the worker warns).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import jwt
from faust.web import Request, Response

from app import app
from app.errors import ApiError
from views.api_doc import Operations, errors
from views.base import ApiView, read_json
from views.params import InvalidParameter

MAX_TTL_SECONDS = 3600
FIELDS = {"tenant": "dev", "subject": "console", "scope": "chat tools:http"}


class DevTokensOff(ApiError):
    code = "not_found"


@app.page("/dev/token")
class DevToken(ApiView):
    public = True  # it is the issuer: nobody has a token yet
    openapi: ClassVar[Operations] = {
        "post": {
            "summary": "Development issuer: a signed token for anyone (only with SOMA_DEV_TOKENS; 404 otherwise)",
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "tenant": {"type": "string", "minLength": 1, "maxLength": 128},
                                "subject": {"type": "string", "minLength": 1, "maxLength": 128},
                                "scope": {"type": "string", "minLength": 1, "maxLength": 128},
                                "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_TTL_SECONDS},
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": {
                    "description": "the token, its claims and its lifetime",
                    "content": {"application/json": {"schema": {"type": "object", "required": ["token"]}}},
                },
                **errors("400", "404", "408", "413", "415"),
            },
        }
    }

    async def post(self, request: Request) -> Response:
        settings = app.settings
        if not settings.dev_tokens:
            raise DevTokensOff("no such path (the development issuer is off: SOMA_DEV_TOKENS)")
        body: Any = {}
        if request.headers.get("Content-Length", "0") != "0":
            body = await read_json(request, settings.http_body_timeout_seconds)
        if not isinstance(body, dict):
            raise InvalidParameter("expected a JSON object: tenant, subject, scope, ttl_seconds (all optional)")
        values = {name: body.get(name, default) for name, default in FIELDS.items()}
        ttl = body.get("ttl_seconds", 900)
        if not all(isinstance(v, str) and 0 < len(v) <= 128 for v in values.values()):
            raise InvalidParameter("tenant, subject and scope must be strings of 1-128 characters")
        if not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_SECONDS:
            raise InvalidParameter(f"ttl_seconds must be an integer from 1 to {MAX_TTL_SECONDS}")
        now = int(time.time())
        claims: dict[str, Any] = {
            settings.jwt_tenant_claims.split(",")[0].strip(): values["tenant"],
            "sub": values["subject"],
            "scope": values["scope"],
            "iat": now,
            "exp": now + ttl,
        }
        if settings.jwt_issuer:
            claims["iss"] = settings.jwt_issuer
        if settings.jwt_audience:
            claims["aud"] = settings.jwt_audience
        token = jwt.encode(claims, settings.jwt_secret, algorithm=settings.jwt_algorithm_list()[0])
        return self.json({"token": token, "claims": claims, "expires_in": ttl}, status=201)
