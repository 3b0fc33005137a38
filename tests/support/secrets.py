"""Secrets the suite hands to workers or gets from them (tickets), and the check that none of them, nor any
token, reaches a log."""

from __future__ import annotations

import re
from pathlib import Path

# what a JWT looks like: a base64url JSON header ({"... = eyJ), a dot, a base64url JSON payload
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{4,}")

_given: set[str] = set()


def note(env: dict[str, str]) -> None:
    """Remember the secrets of a worker's environment."""
    for name in ("SOMA_JWT_SECRET", "SOMA_KAFKA_SASL_PASSWORD"):
        value = env.get(name)
        if value:
            _given.add(value)


def remember(value: str) -> None:
    """Remember a credential a test was given (a stream ticket): it must not reach a log either."""
    _given.add(value)


def leaks(paths: list[Path]) -> list[str]:
    """Each log line of ``paths`` that holds a token or a secret handed to a worker, as ``file:line: what``."""
    found: list[str] = []
    secrets = [s.encode() for s in _given]
    for path in paths:
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if JWT.search(line):
                found.append(f"{path.name}:{number}: a token")
            found.extend(f"{path.name}:{number}: a secret" for secret in secrets if secret in line)
    return found
