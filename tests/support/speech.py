"""Voice messages for the tests: words spoken by espeak-ng (a Debian package ``make tools`` installs), and how a
transcript is compared with them."""

from __future__ import annotations

import re
import subprocess
import wave
from pathlib import Path

from deploy.localstack.go_tools import ESPEAK

# the test's words, as espeak-ng says them (a voice and speed at which Whisper tiny.en hears them: from 105 to
# 130 words a minute it writes "Hello, backbone." for this voice)
SPOKEN = "Hello, backbone."
VOICE = ("-v", "en-gb-x-gbclan", "-s", "115")


def speak(text: str, path: Path, cache_dir: Path) -> bytes:
    """``text`` spoken by espeak-ng into a WAV file (22,050 Hz, 16-bit mono); its bytes."""
    espeak = ESPEAK.require(cache_dir)
    subprocess.run([str(espeak), *VOICE, "-w", str(path), text], check=True, capture_output=True, timeout=60)
    return path.read_bytes()


def lead_in(path: Path, seconds: float) -> None:
    """Put ``seconds`` of silence before the WAV file's sound (a microphone opened a moment before recording)."""
    with wave.open(str(path), "rb") as source:
        params = source.getparams()
        frames = source.readframes(source.getnframes())
    silence = bytes(int(params.framerate * seconds) * params.sampwidth * params.nchannels)
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(silence + frames)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def heard_hello_backbone(transcript: str) -> bool:
    """The words spoken, whatever the punctuation ("Hello, backbone."; "back bone" would do too)."""
    heard = words(transcript)
    return "hello" in heard and "backbone" in "".join(heard)
