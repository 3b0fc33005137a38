"""Apply the yoyo migrations of ``migrations/`` (``python -m tools.migrate``; ``make migrate``)."""

from __future__ import annotations

import sys
from typing import Any

from yoyo import get_backend, read_migrations

from app import data
from app.settings import Settings

MIGRATIONS = data.folder("migrations")


def _backend(dsn: str) -> Any:
    # yoyo's psycopg2 backend is the "postgresql" scheme; "postgres://" is an alias we accept too
    return get_backend(dsn.replace("postgres://", "postgresql://", 1))


def apply(dsn: str) -> int:
    """Apply every pending migration to ``dsn``; returns how many were applied."""
    return _migrate(dsn, rollback=False)


def rollback(dsn: str) -> int:
    """Roll back every applied migration of ``dsn``; returns how many were rolled back."""
    return _migrate(dsn, rollback=True)


def _migrate(dsn: str, *, rollback: bool) -> int:
    backend = _backend(dsn)
    migrations = read_migrations(str(MIGRATIONS))
    with backend.lock():
        if rollback:
            chosen = backend.to_rollback(migrations)
            backend.rollback_migrations(chosen)
        else:
            chosen = backend.to_apply(migrations)
            backend.apply_migrations(chosen)
    backend.connection.close()
    return len(chosen)


def main() -> int:
    settings = Settings.from_env()
    count = rollback(settings.postgres_dsn) if sys.argv[1:] == ["rollback"] else apply(settings.postgres_dsn)
    print(f"migrations: {count} {'rolled back' if sys.argv[1:] == ['rollback'] else 'applied'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
