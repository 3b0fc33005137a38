"""``make run REPLICAS=N``: N workers of one group on consecutive web ports, each with its own data dir and log.

``python -m deploy.localstack run N`` starts them (``faust -A app worker``), records each one's pid under
``<stack dir>/workers/`` and waits: Ctrl-C (or SIGTERM) stops them all; a worker that exits is reported and the
others go on. One worker (the default) logs to the terminal as before; with more, each logs to its own file.
``python -m deploy.localstack status`` then lists them with their health and partitions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from app.settings import Settings
from deploy.localstack.base import StackError, pid_alive, port_open

FAUST = Path(sys.executable).parent / "faust"


def workers_dir(settings: Settings) -> Path:
    return settings.stack_dir / "workers"


def _ports(settings: Settings, count: int) -> list[int]:
    ports = [settings.web_port + n for n in range(count)]
    taken = [port for port in ports if port_open(settings.web_host, port)]
    if taken:
        raise StackError(
            f"web port(s) {', '.join(map(str, taken))} already in use: stop what runs there or set SOMA_WEB_PORT"
        )
    return ports


def run(settings: Settings, count: int) -> int:
    """Start ``count`` workers and wait for them; the exit code is the first failure's (0 when all stopped)."""
    if count < 1:
        raise StackError(f"REPLICAS must be >= 1, not {count}")
    home = workers_dir(settings)
    home.mkdir(parents=True, exist_ok=True)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    for port in _ports(settings, count):
        env = {**os.environ, "SOMA_WEB_PORT": str(port), "SOMA_DATA_DIR": str(home / f"{port}-data")}
        log_path = home / f"worker-{port}.log"
        output = None if count == 1 else log_path.open("ab")
        procs[port] = subprocess.Popen(
            [str(FAUST), "-A", "app", "worker", "-l", "info"], env=env, stdout=output, stderr=subprocess.STDOUT
        )
        (home / f"worker-{port}.pid").write_text(f"{procs[port].pid}\n")
        where = "the terminal" if output is None else str(log_path)
        print(f"worker {len(procs)} of {count}: http://{settings.web_host}:{port} (pid {procs[port].pid}, log {where})")

    def forward(signum: int, _frame: FrameType | None) -> None:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    # Ctrl-C reaches every worker (one process group); SIGTERM to this process is passed on
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, lambda *_: None)
    code = 0
    try:
        while procs:
            for port, proc in list(procs.items()):
                if proc.poll() is not None:
                    print(f"worker on port {port} exited with {proc.returncode}", file=sys.stderr, flush=True)
                    code = code or proc.returncode
                    (home / f"worker-{port}.pid").unlink(missing_ok=True)
                    del procs[port]
            time.sleep(0.2)
    finally:
        forward(signal.SIGTERM, None)
    return code


def _get(url: str, timeout: float = 2.0) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - a loopback http URL we built
            found: dict[str, object] = json.loads(resp.read())
            return found
    except urllib.error.HTTPError as exc:  # /health answers 503 with its body when a component is down
        with contextlib.suppress(ValueError):
            body: dict[str, object] = json.loads(exc.read())
            return body
        return None
    except (OSError, ValueError):
        return None


def status(settings: Settings) -> list[str]:
    """One line per worker started by ``run``: port, pid, health and how many partitions it holds."""
    lines = []
    for pid_file in sorted(workers_dir(settings).glob("worker-*.pid")):
        port = int(pid_file.stem.removeprefix("worker-"))
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if not pid_alive(pid):
            pid_file.unlink(missing_ok=True)
            continue
        base = f"http://{settings.web_host}:{port}"
        health = _get(base + "/health")
        info = _get(base + "/v1/worker") or {}
        assigned = info.get("assigned")
        partitions = len(assigned) if isinstance(assigned, list) else "?"
        state = health.get("status", "?") if health else "not answering"
        lines.append(
            f"worker    {state} on {base} (pid {pid}, {partitions} partitions, streams {info.get('open_streams', '?')})"
        )
    return lines
