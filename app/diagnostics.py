"""Operator diagnostics: ``kill -USR2 <worker pid>`` logs every asyncio task's stack; repeated log lines are limited."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import time

log = logging.getLogger(__name__)


def dump_tasks() -> None:
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    out.write(f"{len(tasks)} asyncio tasks:\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.write(f"--- {task.get_name()}: {task.get_coro()!r}\n")
        task.print_stack(limit=25, file=out)
    log.warning("%s", out.getvalue())


class RepeatLimiter(logging.Filter):
    """Lets one record of a kind (logger, message template, level) through per ``window`` seconds.

    A fault that repeats (descriptors exhausted, a client sending garbage in a loop) must not grow the log by
    gigabytes: the next record let through says how many were held back.
    """

    MAX_KINDS = 10_000

    def __init__(self, window: float = 10.0) -> None:
        super().__init__()
        self.window = window
        self._kinds: dict[tuple[str, str, int], list[float]] = {}  # kind -> [window start, suppressed count]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, str(record.msg), record.levelno)
        now = time.monotonic()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return False
        if len(self._kinds) >= self.MAX_KINDS:
            self._kinds.clear()
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} [{int(seen[1])} more like this in the last {now - seen[0]:.0f} s not logged]"
        self._kinds[kind] = [now, 0]
        return True


def install(loop: asyncio.AbstractEventLoop) -> None:
    loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
    limiter = RepeatLimiter()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatLimiter) for f in handler.filters):
            handler.addFilter(limiter)
