"""``POST /v1/session/{session_id}/voice``: a voice message, transcribed (app/speech.py), then posted as the
session's ``user.message`` with ``metadata.source = "voice"``: stored, streamed and answered like a typed one.

The body is the audio itself (``Content-Type: audio/*`` or ``application/octet-stream``; WAV, Ogg, FLAC, MP3,
WebM or MP4, at most ``SOMA_VOICE_MAX_BYTES``); ``?persona_id=`` and ``?language=`` (a hint for the speech
server) are optional. The answer is 202 with the event's ids and the transcript, once the broker has the event.
The policy (OPA), when on, is asked after the transcription with the message it would post, so that a policy
written for ``POST /v1/session/message`` sees voice messages the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any, ClassVar, cast

from aiohttp import web
from faust.web import Request, Response

from app import app
from app.auth import Principal
from app.errors import ApiError, BodyTimeout, PayloadTooLarge, UnsupportedMediaType
from app.speech import AudioUnreadable, NoSpeech, SpeechClient, TranscriptionUnavailable
from views.api_doc import IDEMPOTENCY_HEADER, SESSION_PARAM, Operations, errors
from views.base import ApiView, principal
from views.idempotency import fingerprint, once
from views.intake import accept_message, validated
from views.ownership import owners
from views.params import InvalidParameter
from views.params import session_id as checked_session_id

# a language hint as Whisper takes it: an ISO 639-1/3 code (en, de, haw), optionally a region (en-US)
LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z]{2,4})?")
AUDIO_TYPES = {"application/octet-stream", "video/webm", "video/ogg", "video/mp4"}  # and every audio/*
CHUNK_BYTES = 65_536


class VoiceOff(ApiError):
    code = "voice_off"


_speech: SpeechClient | None = None


def speech() -> SpeechClient:
    global _speech
    if _speech is None:
        _speech = SpeechClient(app.settings)
    return _speech


async def read_audio(request: Request, limit: int, within: float) -> bytes:
    """The request's body, at most ``limit`` bytes, complete within ``within`` seconds (413, 408 otherwise)."""
    raw = cast(web.Request, request)
    if raw.content_length is not None and raw.content_length > limit:
        refused = PayloadTooLarge(f"the audio is {raw.content_length} bytes; at most {limit} (SOMA_VOICE_MAX_BYTES)")
        refused.close_connection = True  # the body is not read
        raise refused
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(within):
            async for chunk in raw.content.iter_chunked(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    refused = PayloadTooLarge(f"the audio exceeds {limit} bytes (SOMA_VOICE_MAX_BYTES)")
                    refused.close_connection = True
                    raise refused
                chunks.append(chunk)
    except TimeoutError as exc:
        raw.content.feed_eof()
        raise BodyTimeout(f"the audio did not arrive within {within:g} s") from exc
    return b"".join(chunks)


@app.page("/v1/session/{session_id}/voice")
class VoiceMessage(ApiView):
    openapi: ClassVar[Operations] = {
        "post": {
            "summary": "Post a voice message: transcribed, then posted as the session's user.message (source voice)",
            "parameters": [
                SESSION_PARAM,
                IDEMPOTENCY_HEADER,
                {
                    "name": "persona_id",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                },
                {
                    "name": "language",
                    "in": "query",
                    "required": False,
                    "description": "the audio's language, a hint for the speech server (ISO 639-1, e.g. en)",
                    "schema": {"type": "string", "pattern": "^[a-z]{2,3}(-[A-Za-z]{2,4})?$"},
                },
            ],
            "requestBody": {
                "required": True,
                "description": "the audio: WAV, Ogg, FLAC, MP3, WebM or MP4, at most SOMA_VOICE_MAX_BYTES",
                "content": {
                    "audio/*": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "202": {
                    "description": "transcribed, and the broker has the message",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VoiceAccepted"}}},
                },
                **errors("400", "401", "403", "404", "408", "409", "413", "415", "422", "429", "503"),
            },
        }
    }

    async def authorize(self, app: Any, request: Any, caller: Principal) -> None:
        """Asked after the transcription, with the message it would post (:meth:`post`)."""

    async def post(self, request: Request, session_id: str) -> Response:
        sid = checked_session_id(session_id)
        settings = app.settings
        if not settings.stt_url:
            raise VoiceOff("this service takes no voice messages (SOMA_STT_URL is not set)")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if not content_type.startswith("audio/") and content_type not in AUDIO_TYPES:
            raise UnsupportedMediaType(f"expected audio (audio/*), got {content_type or 'no Content-Type'}")
        query = request.query
        persona_id = query.get("persona_id") or None
        language = query.get("language") or None
        if persona_id is not None and len(persona_id) > 128:
            raise InvalidParameter("persona_id must be at most 128 characters")
        if language is not None and not LANGUAGE.fullmatch(language):
            raise InvalidParameter("language must be a language code such as en or en-US")
        caller = principal(request)
        await owners.claim(caller, sid)  # another tenant's session: 404 before any transcription
        audio = await read_audio(request, settings.voice_max_bytes, settings.http_body_timeout_seconds)

        key = request.headers.get("Idempotency-Key")

        async def make() -> tuple[int, dict[str, Any]]:
            return 202, await self._post(request, caller, sid, audio, persona_id, language, key)

        if key is None:
            status, answer = await make()
        else:
            heard = {"audio": hashlib.sha256(audio).hexdigest(), "persona_id": persona_id, "language": language}
            status, answer = await once(
                app,
                caller,
                key,
                fingerprint("POST", request.url.path, heard),
                make,
                longest=settings.stt_timeout_seconds,
            )
        return self.json(answer, status=status)

    async def _post(
        self,
        request: Request,
        caller: Principal,
        sid: str,
        audio: bytes,
        persona_id: str | None,
        language: str | None,
        key: str | None,
    ) -> dict[str, Any]:
        metrics = app.metrics
        try:
            transcript = await speech().transcribe(app.resources.http(), audio, language)
            if not transcript.text:
                metrics.voiced("no_speech", transcript.seconds)
                raise NoSpeech("no speech was heard in the audio")
        except AudioUnreadable:
            metrics.voiced("audio_unreadable", 0.0)
            raise
        except TranscriptionUnavailable:
            metrics.voiced("unavailable", 0.0)
            raise
        metadata = {"source": "voice", "audio_bytes": str(len(audio)), "audio_format": transcript.kind}
        metadata["stt_model"] = app.settings.stt_model
        if transcript.duration is not None:
            metadata["audio_seconds"] = f"{transcript.duration:.2f}"
        if transcript.language:
            metadata["language"] = transcript.language
        message: dict[str, Any] = {"session_id": sid, "message": transcript.text, "metadata": metadata}
        if persona_id is not None:
            message["persona_id"] = persona_id
        validated("message_request", message)
        if app.policy.enabled:
            await self.decide(app, request, caller, message)
        answer = await accept_message(app, message, caller, idempotency_key=key)
        metrics.voiced("posted", transcript.seconds)
        return {**answer, "transcript": transcript.text}
