"""What every workload of the benchmark shares: an isolated slice of the real stack, CPU accounting, percentiles."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.isolation import Isolated, admin_execute, base_settings, isolated, migrated_template
from tests.support.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "bench"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (and its reaped children) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields after the command: state=0 ... utime=11, stime=12, cutime=13, cstime=14
    return sum(int(v) for v in fields[11:15]) / TICKS


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile (0..1) of an already sorted list, nearest rank."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary_ms(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds of samples given in seconds."""
    ordered = sorted(samples)
    return {
        name: round(percentile(ordered, q) * 1000, 2) for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
    } | {"max": round(ordered[-1] * 1000, 2) if ordered else float("nan")}


class Stack:
    """The real stack's base settings and a migrated template database, made once per bench run."""

    def __init__(self) -> None:
        self.settings = base_settings()
        self.template = migrated_template(self.settings)

    @contextmanager
    def slice(self, name: str, **overrides: object) -> Iterator[Isolated]:
        """Own topics, Redis prefix and database for one workload; removed afterwards."""
        data = ARTIFACTS / "data" / name
        data.mkdir(parents=True, exist_ok=True)
        with isolated(self.settings, self.template, data, **overrides) as iso:
            yield iso

    def close(self) -> None:
        admin_execute(self.settings.postgres_dsn, f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every)
    return False


# added to every bench worker's environment (``--otlp``: traces exported to a collector)
WORKER_ENV: dict[str, str] = {}


def start_worker(env: dict[str, str], name: str) -> Worker:
    """A worker for one workload; its pid in artifacts/bench/worker.pid, for a profiler to attach to."""
    worker = Worker({**env, **WORKER_ENV}, log_path(name)).start()
    (ARTIFACTS / "worker.pid").write_text(str(worker.pid))
    return worker


def log_path(name: str) -> Path:
    path = ARTIFACTS / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return path


Result = dict[str, Any]
