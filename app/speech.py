"""Speech to text for voice messages (views/voice.py): an OpenAI-compatible ``POST /v1/audio/transcriptions``
server (``SOMA_STT_URL``; faster-whisper-server with a Whisper model on this machine, deploy/localstack/stt_server.py).

What can go wrong, and how a client hears of it:

- audio that is empty or in no container we know (sniffed from its first bytes): 422 ``audio_unreadable``,
  the speech server is not asked;
- the server refuses it (4xx), or fails on it (5xx) while its ``/health`` says it is well: 422
  ``audio_unreadable`` (the audio, not the server, is the trouble);
- the server is away, slow past ``SOMA_STT_TIMEOUT_SECONDS``, or fails and is unwell: 503
  ``transcription_unavailable`` with Retry-After;
- it transcribes the audio to nothing, or only to segments it deems silence (:func:`heard`): 422 ``no_speech``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from app.errors import ApiError

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger(__name__)

# containers sniffed from their first bytes: (offset, magic, name); the speech server decodes them (FFmpeg)
MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"RIFF", "wav"),  # and b"WAVE" at 8
    (0, b"OggS", "ogg"),
    (0, b"fLaC", "flac"),
    (0, b"ID3", "mp3"),
    (0, b"\x1a\x45\xdf\xa3", "webm"),  # Matroska/WebM (what browsers record)
    (4, b"ftyp", "mp4"),
)
# a segment Whisper gives at least this probability of holding no speech is not part of the transcript
NO_SPEECH_PROBABILITY = 0.8
# the file name sent with each kind (the server may look at its extension)
EXTENSIONS = {"wav": "wav", "ogg": "ogg", "flac": "flac", "mp3": "mp3", "webm": "webm", "mp4": "m4a"}


class AudioUnreadable(ApiError):
    code = "audio_unreadable"


class NoSpeech(ApiError):
    code = "no_speech"


class TranscriptionUnavailable(ApiError):
    code = "transcription_unavailable"
    retry_after = 5


@dataclasses.dataclass(frozen=True)
class Transcript:
    text: str
    kind: str  # the audio's container (MAGIC)
    seconds: float  # the speech server's time
    duration: float | None  # of the audio, when the server says
    language: str | None


def kind_of(audio: bytes) -> str:
    """The audio's container, from its first bytes; AudioUnreadable when it is empty or none we know."""
    if not audio:
        raise AudioUnreadable("the audio is empty")
    if audio[:4] == b"RIFF" and audio[8:12] != b"WAVE":
        raise AudioUnreadable("a RIFF file that is not WAVE audio")
    for offset, magic, name in MAGIC:
        if audio[offset : offset + len(magic)] == magic:
            return name
    if len(audio) >= 2 and audio[0] == 0xFF and audio[1] & 0xE0 == 0xE0:  # an MPEG audio frame without ID3
        return "mp3"
    raise AudioUnreadable("the audio is none of WAV, Ogg, FLAC, MP3, WebM or MP4 (by its first bytes)")


def heard(body: dict[str, Any]) -> str:
    """The transcript of a verbose_json answer, without the segments Whisper itself thinks hold no speech.

    Whisper writes something for silence or noise (" You" for two seconds of silence, with a no-speech
    probability of 0.94, where spoken words score below 0.1): such segments are dropped, so that a recording
    of nothing is 422 ``no_speech`` rather than a message nobody said.
    """
    segments = body.get("segments")
    if isinstance(segments, list) and segments and all(isinstance(s, dict) for s in segments):
        spoken = [s for s in segments if not _silent(s.get("no_speech_prob"))]
        return "".join(str(s.get("text", "")) for s in spoken)
    text = body.get("text")
    if not isinstance(text, str):
        raise TranscriptionUnavailable("the speech server answered without a transcript")
    return text


def _silent(probability: Any) -> bool:
    return isinstance(probability, int | float) and probability >= NO_SPEECH_PROBABILITY


class SpeechClient:
    """Transcribes audio with the speech server, at most ``SOMA_STT_CONCURRENCY`` at once on this worker."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.stt_url.rstrip("/")
        self.model = settings.stt_model
        self.timeout = settings.stt_timeout_seconds
        self._slots = asyncio.Semaphore(settings.stt_concurrency)

    async def transcribe(self, http: aiohttp.ClientSession, audio: bytes, language: str | None) -> Transcript:
        kind = kind_of(audio)
        began = time.perf_counter()
        try:
            # waiting for a slot counts against the same deadline: a client is answered within it either way
            async with asyncio.timeout(self.timeout), self._slots:
                body = await self._ask(http, audio, kind, language)
        except TimeoutError as exc:
            raise TranscriptionUnavailable(
                f"the speech server did not transcribe within {self.timeout:g} s; retry later"
            ) from exc
        text = heard(body)
        duration = body.get("duration")
        found_language = body.get("language")
        return Transcript(
            text=text.strip(),
            kind=kind,
            seconds=time.perf_counter() - began,
            duration=float(duration) if isinstance(duration, int | float) else None,
            language=found_language if isinstance(found_language, str) else None,
        )

    async def _ask(self, http: aiohttp.ClientSession, audio: bytes, kind: str, language: str | None) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("file", audio, filename=f"voice.{EXTENSIONS[kind]}", content_type="application/octet-stream")
        form.add_field("model", self.model)
        form.add_field("response_format", "verbose_json")  # the audio's duration and language too
        if language:
            form.add_field("language", language)
        try:
            async with http.post(f"{self.url}/v1/audio/transcriptions", data=form) as response:
                if response.status == 200:
                    answer = await response.json(content_type=None)
                    if not isinstance(answer, dict):
                        raise TranscriptionUnavailable("the speech server answered something else than JSON")
                    return answer
                said = (await response.text())[:300]
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            log.warning("the speech server at %s failed: %r", self.url, exc)
            raise TranscriptionUnavailable(f"the speech server is unreachable ({type(exc).__name__}); retry") from exc
        if response.status < 500:
            raise AudioUnreadable(f"the speech server refused the audio ({response.status}): {said}")
        if await self._healthy(http):
            # it answers its health check but failed on this audio: the audio is what it could not decode
            raise AudioUnreadable(f"the speech server could not decode the audio ({response.status})")
        raise TranscriptionUnavailable(f"the speech server failed ({response.status}); retry later")

    async def _healthy(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=2.0)) as response:
                return response.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
