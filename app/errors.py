"""The project's root exception and the errors every area shares."""

from __future__ import annotations


class SomaError(Exception):
    """Root of every error this project raises on purpose."""


class SettingsError(SomaError):
    """A ``SOMA_*`` variable is unknown or has a value that cannot work."""


class ApiError(SomaError):
    """An error answered to an HTTP client: a status and a stable machine-readable code."""

    status: int = 400
    code: str = "bad_request"
    retry_after: int | None = None  # seconds, sent as Retry-After
    close_connection: bool = False  # the connection is closed after the answer (its request was not read whole)

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retry_after is not None:
            self.retry_after = retry_after

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class MalformedRequest(ApiError):
    status = 400
    code = "malformed_json"


class BodyTimeout(ApiError):
    status = 408
    code = "body_timeout"
    close_connection = True


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class InvalidRequest(ApiError):
    status = 422
    code = "validation_failed"


class StorageUnavailable(ApiError):
    """PostgreSQL did not answer a read within ``SOMA_READ_DEADLINE_SECONDS``; safe to retry later."""

    status = 503
    code = "storage_unavailable"
    retry_after = 5


class UpstreamUnavailable(ApiError):
    """A dependency (the broker) did not accept the request in time; safe to retry."""

    status = 503
    code = "enqueue_failed"


class EventInvalid(SomaError):
    """An event does not match its JSON Schema; ``errors`` lists each violation."""

    def __init__(self, schema: str, errors: list[str]) -> None:
        super().__init__(f"{schema}: " + "; ".join(errors))
        self.schema = schema
        self.errors = errors
