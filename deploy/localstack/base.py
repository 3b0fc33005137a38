"""What every stack component shares: ports, pid files, log tails, waiting with a deadline, apt installs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

_apt_updated = False


class StackError(Exception):
    """A component could not be brought up or down; the message names it and shows its log tail."""


class WrongService(StackError):
    """The component's port is held by something that is not the expected service."""


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def apt_install(*packages: str) -> None:
    """Install Debian packages (as root), running ``apt-get update`` once per process."""
    global _apt_updated
    if os.geteuid() != 0:
        raise StackError(f"missing {', '.join(packages)}: install them (apt-get install -y {' '.join(packages)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        _apt_updated = True
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def require_command(command: str, package: str) -> str:
    """Path of ``command``, installing its Debian ``package`` first when it is missing."""
    found = shutil.which(command)
    if found is None:
        apt_install(package)
        found = shutil.which(command)
    if found is None:
        raise StackError(f"{command} is still missing after installing {package}")
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); it is not running
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


class Component(ABC):
    """One server of the stack, on ``host:port``, with its data and log under ``home``."""

    name: ClassVar[str]
    start_seconds: ClassVar[float] = 30.0

    def __init__(self, host: str, port: int, home: Path) -> None:
        self.host = host
        self.port = port
        self.home = home

    @property
    def log_path(self) -> Path:
        return self.home / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.home / f"{self.name}.pid"

    @abstractmethod
    def answers(self) -> bool:
        """True when the service answers a real request; WrongService when the port is someone else's."""

    @abstractmethod
    def install(self) -> None:
        """Install what the component needs on this machine (idempotent)."""

    @abstractmethod
    def launch(self) -> None:
        """Start the server process in the background and record its pid."""

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """One-time set-up of the data directory (idempotent)."""

    def ours(self) -> int | None:
        """Pid of the process this stack started, if it is still running."""
        try:
            pid = int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def up(self) -> str:
        """Bring the component up, or reuse what already answers; returns 'reused' or 'started'."""
        if port_open(self.host, self.port):
            if self.ours() is not None:
                self.wait()
                return "running"
            try:
                deadline = time.monotonic() + self.start_seconds
                # False: the server is there but not ready yet (Redis loading its data after a restart)
                while not self.answers() and time.monotonic() < deadline:
                    time.sleep(0.3)
                if self.answers():
                    return "reused"
            except WrongService:
                raise
            except Exception as exc:
                raise WrongService(
                    f"{self.name}: {self.host}:{self.port} is held by something that does not answer as "
                    f"{self.name} ({type(exc).__name__}: {exc})"
                ) from exc
            raise WrongService(f"{self.name}: {self.host}:{self.port} is open but does not answer as {self.name}")
        self.install()
        self.home.mkdir(parents=True, exist_ok=True)
        self.prepare()
        self.launch()
        self.wait()
        return "started"

    def wait(self) -> None:
        deadline = time.monotonic() + self.start_seconds
        last_error = ""
        while time.monotonic() < deadline:
            try:
                if self.answers():
                    return
            except WrongService as exc:
                if self.ours() is None:
                    raise
                # our own server, still starting: Kafka opens its port a moment before it speaks the protocol
                last_error = str(exc)
            except Exception as exc:  # the service is still starting: keep the reason for the report
                last_error = f"{type(exc).__name__}: {exc}"
            if self.pid_path.exists() and self.ours() is None:
                raise StackError(f"{self.name} exited while starting. {last_error}\n{tail(self.log_path)}")
            time.sleep(0.3)
        raise StackError(
            f"{self.name} did not answer on {self.host}:{self.port} within {self.start_seconds:.0f} s. "
            f"{last_error}\nlast lines of {self.log_path}:\n{tail(self.log_path)}"
        )

    def stop(self) -> bool:
        """Stop the process this stack started (never a reused one); True when something was stopped."""
        pid = self.ours()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
        self.pid_path.unlink(missing_ok=True)
        return True

    def status(self) -> str:
        pid = self.ours()
        if pid is not None:
            state = "up" if self.safe_answers() else "starting or not answering"
            return f"{state} (started by the stack, pid {pid}, log {self.log_path})"
        if port_open(self.host, self.port):
            return "up (reused: not started by the stack)" if self.safe_answers() else "port held by another service"
        return "down"

    def safe_answers(self) -> bool:
        try:
            return self.answers()
        except Exception:
            return False

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Run ``argv`` as a daemon (its own session, parented to init), output appended to the component log.

        The shell that starts it exits at once, so the caller holds no child process of the server.
        """
        started = subprocess.run(
            ["sh", "-c", 'setsid "$@" >>"$STACK_SPAWN_LOG" 2>&1 </dev/null & echo $!', "spawn", *argv],
            env={**(env or os.environ), "STACK_SPAWN_LOG": str(self.log_path)},
            cwd=self.home,
            check=True,
            capture_output=True,
            text=True,
        )
        self.pid_path.write_text(started.stdout.strip() + "\n")


class HttpServer(Component):
    """A component spoken to over HTTP at ``http://host:port`` whose program is in the project's cache (OPA,
    Jaeger, the model and speech servers); the settings name it by a base URL."""

    default_port: ClassVar[int] = 80

    def __init__(self, host: str, port: int, home: Path, cache_dir: Path) -> None:
        super().__init__(host, port, home)
        self.cache_dir = cache_dir

    @classmethod
    def from_url(cls, url: str, home: Path, cache_dir: Path) -> Self:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or cls.default_port, home, cache_dir)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def get_json(self, path: str, timeout: float = 5.0) -> Any:
        """``GET path`` decoded; WrongService when the port answers, but not with JSON or with an HTTP error."""
        try:
            # an http:// URL made here from the host and port given
            with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise WrongService(f"{self.name}: {self.host}:{self.port} answered {path} with {exc.code}") from exc
        except ValueError as exc:
            raise WrongService(f"{self.name}: {self.host}:{self.port} does not answer {path} as {self.name}") from exc
