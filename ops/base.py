"""What every operations command shares: its own event loop, one clear line on stderr for a refusal, exit codes.

faust runs an app command inside a ``mode.Worker``, which prints a traceback for any error and decides the exit
code itself; these commands run their coroutine directly instead, so that a bad argument or an unreachable
server is one line on stderr and the exit code tells the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

from faust.cli import option
from faust.cli.base import AppCommand

from app import app

# a bearer token for the worker's API, when its authentication is on
TOKEN_VARIABLE = "SOMAAGENT_TOKEN"  # noqa: S105 - the name of a variable, not a secret
# the options of every command that talks to a worker
WORKER_OPTIONS = (
    option("--url", default=None, help="a worker's base URL [default: http://127.0.0.1:<SOMA_WEB_PORT>]"),
    option("--token", default=None, help=f"bearer token (default: ${TOKEN_VARIABLE})"),
)

# exit codes: 0 done; 1 the outcome was a failure (not found, refused, timed out); 2 bad arguments or a server
# that cannot be reached
FAILED = 1
USAGE = 2


def worker_url(url: str | None) -> str:
    """The worker a command talks to: ``--url``, else this machine's (``SOMA_WEB_PORT``)."""
    return (url or f"http://127.0.0.1:{app.settings.web_port}").rstrip("/")


def bearer_headers(token: str | None) -> dict[str, str]:
    """The Authorization header of ``--token``, else of ``$SOMAAGENT_TOKEN``; none without either."""
    token = token or os.environ.get(TOKEN_VARIABLE) or None
    return {"Authorization": f"Bearer {token}"} if token else {}


def stream_url(base: str, session: str, after: int) -> str:
    """The session's WebSocket stream on worker ``base``, resuming after seq ``after``."""
    return base.replace("http", "ws", 1) + f"/v1/session/{session}/stream?after={after}"


def iso_time(option_name: str, raw: str | None) -> float | None:
    """Seconds since the epoch of an ISO 8601 time option (UTC when it names no zone); None when not given."""
    if raw is None:
        return None
    try:
        found = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{option_name} {raw!r} is not an ISO 8601 time (e.g. 2026-12-02T10:00:00Z)") from None
    return (found if found.tzinfo else found.replace(tzinfo=UTC)).timestamp()


class CommandError(Exception):
    """The command cannot do what was asked; ``str`` is the one line printed, ``code`` the exit code."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


class OpsCommand(AppCommand):
    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        args = self.args + args
        kwargs = {**self.kwargs, **kwargs}
        name = type(self).__name__.replace("_", "-")
        # the clients' own logging of a refused connection would be a second, noisier line: the command says it
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        try:
            code = asyncio.run(self.run(*args, **kwargs))
        except CommandError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            raise SystemExit(exc.code) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        raise SystemExit(int(code or 0))
