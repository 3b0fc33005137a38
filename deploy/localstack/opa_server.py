"""Open Policy Agent for the local stack: the project's policy (deploy/opa/policy.rego), bound to loopback.

Started by the stack only when ``SOMA_OPA_URL`` names a loopback address; its binary is built once by
``make tools`` (deploy/localstack/go_tools.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from deploy.localstack.base import Component, WrongService
from deploy.localstack.go_tools import OPA

POLICY_DIR = Path(__file__).resolve().parent.parent / "opa"


class OpaServer(Component):
    name = "opa"
    start_seconds = 30.0

    def __init__(self, host: str, port: int, home: Path, cache_dir: Path, policy: Path = POLICY_DIR / "policy.rego"):
        super().__init__(host, port, home)
        self.cache_dir = cache_dir
        self.policy = policy

    @classmethod
    def from_url(cls, url: str, home: Path, cache_dir: Path) -> OpaServer:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 8181, home, cache_dir)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def answers(self) -> bool:
        try:
            # an http:// URL made here from the settings' host and port
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:  # noqa: S310
                body = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise WrongService(f"opa: {self.host}:{self.port} answered /health with {exc.code}") from exc
        except (ValueError, urllib.error.URLError) as exc:
            if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, ConnectionRefusedError):
                raise
            raise WrongService(f"opa: {self.host}:{self.port} does not answer as OPA ({exc})") from exc
        return isinstance(body, dict)

    def install(self) -> None:
        OPA.require(self.cache_dir)

    def launch(self) -> None:
        binary = OPA.require(self.cache_dir)
        self.spawn(
            [
                str(binary),
                "run",
                "--server",
                "--disable-telemetry",
                "--addr",
                f"{self.host}:{self.port}",
                "--log-level",
                "error",
                # each decision logged (to this component's log) with its id, which the service's 403 names
                "--set=decision_logs.console=true",
                str(self.policy),
            ]
        )
