"""PostgreSQL for the local stack: a private cluster run as the ``postgres`` user, with the app's role."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg2

from deploy.localstack.base import Component, StackError, WrongService, apt_install, pid_alive

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_NOT_PROVISIONED = ("password authentication failed", "does not exist", "no pg_hba.conf entry")


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent
    raise StackError("postgres: initdb not found")


class PostgresServer(Component):
    name = "postgres"
    start_seconds = 60.0

    def __init__(self, host: str, port: int, home: Path, dsn: str) -> None:
        super().__init__(host, port, home)
        self.dsn = dsn
        parts = urlsplit(dsn)
        self.user = unquote(parts.username or "somaagent")
        self.password = unquote(parts.password or "")
        self.database = parts.path.lstrip("/") or self.user
        for value in (self.user, self.database):
            if not _NAME.fullmatch(value):
                raise StackError(f"postgres: {value!r} in SOMA_POSTGRES_DSN is not a plain identifier")

    @classmethod
    def from_dsn(cls, dsn: str, home: Path) -> PostgresServer:
        parts = urlsplit(dsn)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432, home, dsn)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    def answers(self) -> bool:
        try:
            conn = psycopg2.connect(self.dsn, connect_timeout=3)
        except psycopg2.OperationalError as exc:
            text = str(exc)
            if any(marker in text for marker in _NOT_PROVISIONED):
                # a PostgreSQL server, without our role or database yet
                self.provision()
                conn = psycopg2.connect(self.dsn, connect_timeout=3)
            elif "Connection refused" in text or "shutting down" in text:
                raise
            elif "starting up" in text or "not yet accepting connections" in text:
                return False  # recovering after an unclean stop (crash recovery, WAL replay): it answers once done
            else:
                raise WrongService(
                    f"postgres: {self.host}:{self.port} does not answer as PostgreSQL ({text.strip()})"
                ) from exc
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() == (1,)
        finally:
            conn.close()

    def install(self) -> None:
        try:
            _bindir()
        except StackError:
            apt_install("postgresql")

    def _as_owner(self, argv: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root: run its programs as the postgres user
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def prepare(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres")
        subprocess.run(
            self._as_owner(
                [
                    str(_bindir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "--no-instructions",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def launch(self) -> None:
        options = f"-c listen_addresses={self.host} -p {self.port} -c unix_socket_directories={self.socket_dir}"
        if os.geteuid() == 0:
            self.log_path.touch()
            shutil.chown(self.log_path, "postgres")
        subprocess.run(
            self._as_owner(
                [
                    str(_bindir() / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    options,
                    "-W",
                    "start",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # pg_ctl forks the postmaster; its pid is the first line of postmaster.pid once it has started
        self.pid_path.write_text("pending\n")

    def ours(self) -> int | None:
        if not self.pid_path.exists():
            return None
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def wait(self) -> None:
        # the postmaster pid file appears a moment after pg_ctl returns
        deadline = time.monotonic() + 10
        while self.ours() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        super().wait()

    def provision(self) -> None:
        """Create the app's role and database through the local superuser (our cluster or a Debian one)."""
        host = str(self.socket_dir) if self.socket_dir.exists() and self.ours() else "/var/run/postgresql"
        psql = shutil.which("psql") or str(_bindir() / "psql")
        base = self._as_owner(
            [
                psql,
                "-h",
                host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
            ]
        )
        role = self.user
        exists = subprocess.run(
            [*base, f"SELECT 1 FROM pg_roles WHERE rolname = '{self.user}'"],  # noqa: S608 - _NAME-checked
            capture_output=True,
            text=True,
        )
        if exists.returncode != 0:
            raise StackError(
                f"postgres: {self.host}:{self.port} is a PostgreSQL server without role {self.user!r}, "
                f"and its superuser could not be reached to create it: {exists.stderr.strip()}"
            )
        password = self.password.replace("'", "''")
        if exists.stdout.strip() != "1":
            subprocess.run([*base, f"CREATE ROLE \"{role}\" LOGIN CREATEDB PASSWORD '{password}'"], check=True)
        else:
            subprocess.run([*base, f"ALTER ROLE \"{role}\" LOGIN CREATEDB PASSWORD '{password}'"], check=True)
        has_db = subprocess.run(
            [*base, f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"],  # noqa: S608 - _NAME-checked
            capture_output=True,
            text=True,
            check=True,
        )
        if has_db.stdout.strip() != "1":
            subprocess.run([*base, f'CREATE DATABASE "{self.database}" OWNER "{role}"'], check=True)

    def stop(self) -> bool:
        if self.ours() is None:
            self.pid_path.unlink(missing_ok=True)
            return False
        subprocess.run(
            self._as_owner([str(_bindir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.pid_path.unlink(missing_ok=True)
        return True
