"""The project's root exception, the errors every area shares, and every error code a client can receive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class SomaError(Exception):
    """Root of every error this project raises on purpose."""


@dataclass(frozen=True)
class ErrorCode:
    status: int  # the HTTP status it is answered with (a WebSocket error frame carries the code alone)
    meaning: str
    websocket_only: bool = False  # sent only as a WebSocket error frame, never as an HTTP answer


# Every machine-readable code the service answers with, in one place: ApiError refuses any other, the
# OpenAPI document (views/openapi.py) lists them per status, and tests/test_error_codes.py checks that no
# module answers a code that is not here and that none here is unused.
CODES: dict[str, ErrorCode] = {
    "malformed_json": ErrorCode(400, "the body (or a WebSocket frame) is not JSON"),
    "invalid_parameter": ErrorCode(400, "a path or query parameter is malformed or out of range"),
    "unknown_action": ErrorCode(400, "the request's action is not one the endpoint knows"),
    "invalid_idempotency_key": ErrorCode(400, "Idempotency-Key is not 1-255 visible ASCII characters"),
    "malformed_http": ErrorCode(400, "the request is not valid HTTP/1.1"),
    "session_mismatch": ErrorCode(400, "a frame names another session than its stream's", websocket_only=True),
    "binary_not_supported": ErrorCode(400, "a binary WebSocket frame; the stream speaks JSON text", True),
    "unauthenticated": ErrorCode(401, "no bearer token, stream ticket or cookie was sent (WWW-Authenticate)"),
    "invalid_token": ErrorCode(401, "the token or ticket was refused: bad signature, expired, wrong aud/iss..."),
    "origin_not_allowed": ErrorCode(403, "a WebSocket handshake from an origin not in SOMA_WS_ALLOWED_ORIGINS"),
    "policy_denied": ErrorCode(403, "the policy (OPA) did not allow it: denied, undefined, or OPA unreachable"),
    "not_found": ErrorCode(404, "no such path"),
    "session_not_found": ErrorCode(404, "no such session"),
    "method_not_allowed": ErrorCode(405, "the path does not take this method (see Allow)"),
    "body_timeout": ErrorCode(408, "the body did not arrive within SOMA_HTTP_BODY_TIMEOUT_SECONDS"),
    "idempotency_in_progress": ErrorCode(409, "a request with this Idempotency-Key is still being handled"),
    "replies_off": ErrorCode(409, "the service does not reply to messages (SOMA_SLM_URL unset): nothing to stop"),
    "voice_off": ErrorCode(409, "the service takes no voice messages (SOMA_STT_URL unset)"),
    "payload_too_large": ErrorCode(413, "the body exceeds SOMA_MAX_BODY_BYTES (audio: SOMA_VOICE_MAX_BYTES)"),
    "unsupported_media_type": ErrorCode(415, "the body is not application/json (audio: not audio/*)"),
    "validation_failed": ErrorCode(422, "the body does not match its JSON Schema"),
    "unstorable_text": ErrorCode(422, "text PostgreSQL cannot store (a NUL character)"),
    "idempotency_key_reused": ErrorCode(422, "this Idempotency-Key was used with another request"),
    "audio_unreadable": ErrorCode(422, "the audio is empty, not WAV/Ogg/FLAC/MP3/WebM/MP4, or cannot be decoded"),
    "no_speech": ErrorCode(422, "the audio was transcribed to nothing: no speech in it"),
    "upgrade_required": ErrorCode(426, "a WebSocket endpoint asked without an Upgrade"),
    "rate_limited": ErrorCode(429, "past SOMA_RATE_LIMIT_*; retry after Retry-After (RateLimit headers)"),
    "too_many_streams": ErrorCode(429, "the tenant or address holds SOMA_STREAMS_PER_* streams on this worker"),
    "request_head_too_large": ErrorCode(431, "the request line or headers exceed the server's limits"),
    "internal_error": ErrorCode(500, "a defect; the server logged it"),
    "enqueue_failed": ErrorCode(503, "the broker did not accept the message in time; retry"),
    "overloaded": ErrorCode(503, "too many messages wait for the broker; retry after Retry-After"),
    "storage_behind": ErrorCode(503, "storage is over SOMA_MAX_STORAGE_LAG_SECONDS behind; retry after Retry-After"),
    "idempotency_unavailable": ErrorCode(503, "idempotency records (Redis) are unavailable; retry"),
    "storage_unavailable": ErrorCode(503, "PostgreSQL did not answer within SOMA_READ_DEADLINE_SECONDS; retry"),
    "too_many_connections": ErrorCode(503, "every connection slot is busy; retry after Retry-After"),
    "auth_unavailable": ErrorCode(503, "stream tickets (Redis) cannot be checked; retry"),
    "feed_unavailable": ErrorCode(503, "a stream could not subscribe to the session feed (Redis); retry"),
    "stop_unavailable": ErrorCode(503, "a reply's stop could not be recorded (Redis); retry"),
    "transcription_unavailable": ErrorCode(503, "the speech server did not transcribe in time or is away; retry"),
}


class UnknownErrorCode(SomaError, LookupError):
    """A module answered a code that is not in ``CODES`` (a defect: every code is documented there)."""


def status_of(code: str) -> int:
    try:
        return CODES[code].status
    except KeyError:
        raise UnknownErrorCode(f"error code {code!r} is not in app.errors.CODES") from None


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The service's error envelope for ``code``; raises UnknownErrorCode for a code not in ``CODES``."""
    status_of(code)
    return {"error": {"code": code, "message": message}}


class SettingsError(SomaError):
    """A ``SOMA_*`` variable is unknown or has a value that cannot work."""


class ApiError(SomaError):
    """An error answered to an HTTP client: a stable machine-readable code of ``CODES``, and its status."""

    code: ClassVar[str]  # each subclass names its code; ApiError itself takes one per instance
    status: int  # from CODES, never restated
    retry_after: int | None = None  # seconds, sent as Retry-After
    close_connection: bool = False  # the connection is closed after the answer (its request was not read whole)
    headers: dict[str, str] | None = None  # more headers of the answer (rate limits)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            cls.status = status_of(cls.code)

    def __init__(self, message: str, *, code: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # an instance's own code, of CODES like every other
            self.status = status_of(code)
        elif not hasattr(self, "code"):
            raise TypeError("ApiError needs a code")
        if retry_after is not None:
            self.retry_after = retry_after

    def body(self) -> dict[str, dict[str, str]]:
        return error_body(self.code, self.message)


class MalformedRequest(ApiError):
    code = "malformed_json"


class BodyTimeout(ApiError):
    code = "body_timeout"
    close_connection = True


class PayloadTooLarge(ApiError):
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    code = "unsupported_media_type"


class InvalidRequest(ApiError):
    code = "validation_failed"


class StorageUnavailable(ApiError):
    """PostgreSQL did not answer a read within ``SOMA_READ_DEADLINE_SECONDS``; safe to retry later."""

    code = "storage_unavailable"
    retry_after = 5


class UpstreamUnavailable(ApiError):
    """A dependency (the broker) did not accept the request in time; safe to retry."""

    code = "enqueue_failed"


class EventInvalid(SomaError):
    """An event does not match its JSON Schema; ``errors`` lists each violation."""

    def __init__(self, schema: str, errors: list[str]) -> None:
        super().__init__(f"{schema}: " + "; ".join(errors))
        self.schema = schema
        self.errors = errors
