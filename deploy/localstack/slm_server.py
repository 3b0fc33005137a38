"""llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``, built once by ``make tools``) serving the
small model of the cache: the responder's model server (agents/responder.py) for ``make run SLM=1`` and the
tests. ``SOMA_SLM_URL`` names it; the stack starts it only when that URL is on this machine.
"""

from __future__ import annotations

from pathlib import Path

from deploy.localstack.base import HttpServer, WrongService
from deploy.localstack.go_tools import LLAMA_SERVER

# the model's name in the API (SOMA_SLM_MODEL)
MODEL_ALIAS = "smollm2"


class SlmServer(HttpServer):
    name = "slm"
    start_seconds = 120.0

    def __init__(self, host: str, port: int, home: Path, cache_dir: Path, threads: int = 2) -> None:
        super().__init__(host, port, home, cache_dir)
        self.threads = threads

    def answers(self) -> bool:
        body = self.get_json("/v1/models")
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise WrongService(f"slm: {self.host}:{self.port} does not answer as an OpenAI-compatible server")
        return True

    def install(self) -> None:
        # asked for explicitly (make run SLM=1): built here if `make tools` has not yet (minutes, once)
        if not LLAMA_SERVER.path(self.cache_dir).exists() or not LLAMA_SERVER.model_path(self.cache_dir).exists():
            print("slm: building llama.cpp's server and unpacking its model, once per machine (5-11 min)", flush=True)
            LLAMA_SERVER.build(self.cache_dir)

    def launch(self) -> None:
        self.spawn(
            [
                str(LLAMA_SERVER.require(self.cache_dir)),
                "-m",
                "llama_cpp.server",
                "--model",
                str(LLAMA_SERVER.model_path(self.cache_dir)),
                "--model_alias",
                MODEL_ALIAS,
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--n_threads",
                str(self.threads),
                "--n_ctx",
                "4096",
                # its default lets a new request cut the one being answered short (ending it as if complete):
                # requests wait their turn instead (SOMA_SLM_CONCURRENCY replies may be asked at once)
                "--interrupt_requests",
                "False",
                # chatml (SmolLM2's format) that also takes tools and tool_choice (the responder's tool rounds)
                "--chat_format",
                "chatml-function-calling",
            ]
        )
