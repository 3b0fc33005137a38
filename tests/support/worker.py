"""A real worker process (``faust -A app worker``) started by a test, with its log kept for failures."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from deploy.localstack.base import free_port, tail
from tests.support import secrets

ROOT = Path(__file__).resolve().parents[2]
FAUST = Path(sys.executable).parent / "faust"


class Worker:
    def __init__(
        self, env: dict[str, str], log_path: Path, port: int | None = None, python: Path | None = None, cwd: Path = ROOT
    ) -> None:
        """``python``: run ``python -m faust`` of that interpreter (an installed copy) instead of ours, from ``cwd``."""
        self.argv = [str(python), "-m", "faust"] if python is not None else [str(FAUST)]
        self.cwd = cwd
        self.port = port or free_port()
        self.env = {**env, "SOMA_WEB_PORT": str(self.port)}
        secrets.note(self.env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Worker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.argv, "-A", "app", "worker", "-l", "info"],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    async def wait_http(self, timeout: float = 90.0) -> None:
        """Wait until the web server answers (any status): the worker has started."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"worker exited with {self.proc.returncode}:\n{tail(self.log_path, 60)}")
                try:
                    async with http.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                        await resp.read()
                        return
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.2)
        raise AssertionError(f"worker did not answer within {timeout} s:\n{tail(self.log_path, 60)}")

    async def wait_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in await asyncio.to_thread(self._log_text):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{text!r} not in the worker log within {timeout} s:\n{tail(self.log_path, 60)}")

    def _log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log(self, lines: int = 80) -> str:
        return tail(self.log_path, lines)

    # the same from a test's event loop: process control off the loop (it forks, waits, opens files)

    async def started(self) -> Worker:
        return await asyncio.to_thread(self.start)

    async def stopped(self, timeout: float = 30.0) -> int:
        return await asyncio.to_thread(self.stop, timeout)

    async def killed(self) -> None:
        await asyncio.to_thread(self.kill)


@asynccontextmanager
async def running_pair(env: dict[str, str], log_dir: Path, name: str) -> AsyncIterator[tuple[Worker, Worker]]:
    """Two workers of one group (replicas), both answering; logs ``<name>-a.log`` and ``<name>-b.log``."""
    a = await Worker(env, log_dir / f"{name}-a.log").started()
    b = await Worker(env, log_dir / f"{name}-b.log").started()
    try:
        await asyncio.gather(a.wait_http(), b.wait_http())
        yield a, b
    finally:
        await a.stopped()
        await b.stopped()


@asynccontextmanager
async def running(env: dict[str, str], log_path: Path) -> AsyncIterator[Worker]:
    """A started worker whose web server answers; stopped (SIGTERM) on exit."""
    worker = await Worker(env, log_path).started()
    try:
        await worker.wait_http()
        yield worker
    finally:
        await worker.stopped()
