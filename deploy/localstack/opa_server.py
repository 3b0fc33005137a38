"""Open Policy Agent for the local stack: the project's policy (deploy/opa/policy.rego), bound to loopback.

Started by the stack only when ``SOMA_OPA_URL`` names a loopback address; its binary is built once by
``make tools`` (deploy/localstack/go_tools.py).
"""

from __future__ import annotations

from pathlib import Path

from deploy.localstack.base import HttpServer
from deploy.localstack.go_tools import OPA

POLICY_DIR = Path(__file__).resolve().parent.parent / "opa"


class OpaServer(HttpServer):
    name = "opa"
    start_seconds = 30.0
    default_port = 8181

    def __init__(self, host: str, port: int, home: Path, cache_dir: Path, policy: Path = POLICY_DIR / "policy.rego"):
        super().__init__(host, port, home, cache_dir)
        self.policy = policy

    def answers(self) -> bool:
        return isinstance(self.get_json("/health", timeout=2), dict)

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
