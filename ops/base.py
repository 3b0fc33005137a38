"""What every operations command shares: its own event loop, one clear line on stderr for a refusal, exit codes.

faust runs an app command inside a ``mode.Worker``, which prints a traceback for any error and decides the exit
code itself; these commands run their coroutine directly instead, so that a bad argument or an unreachable
server is one line on stderr and the exit code tells the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, NoReturn

from faust.cli.base import AppCommand

# exit codes: 0 done; 1 the outcome was a failure (not found, refused, timed out); 2 bad arguments or a server
# that cannot be reached
FAILED = 1
USAGE = 2


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
