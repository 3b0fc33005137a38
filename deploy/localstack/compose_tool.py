"""The tool that validates compose.yaml: Debian's ``docker-compose``, installed when it is missing."""

from __future__ import annotations

from deploy.localstack.base import require_command

COMMAND = "docker-compose"
# Debian 12 ships docker-compose 1.29.2; its `config` parses and validates against the Compose
# Specification schema it bundles, without needing a Docker engine
PACKAGE = "docker-compose"


def ensure_compose_tool() -> str:
    """Path of ``docker-compose``, installing its Debian package first when it is missing."""
    return require_command(COMMAND, PACKAGE)
