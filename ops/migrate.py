"""``faust -A app migrate [--rollback]``: the database migrations, as ``make migrate`` applies them.

The same code as ``python -m tools.migrate`` (which the image's entrypoint runs before a worker starts), from
faust's CLI; PostgreSQL that cannot be reached is one line and exit 2.
"""

from __future__ import annotations

import asyncio

import psycopg2
from faust.cli import option

from app import app
from ops.base import CommandError, OpsCommand
from tools import migrate as migrations


@app.command(
    option("--rollback", is_flag=True, default=False, help="roll every applied migration back (empties the database)"),
    base=OpsCommand,
)
async def migrate(self: OpsCommand, rollback: bool) -> int:
    """Apply the pending migrations of migrations/ to SOMA_POSTGRES_DSN (or roll them all back)."""
    dsn = app.settings.postgres_dsn
    run = migrations.rollback if rollback else migrations.apply
    try:
        count = await asyncio.to_thread(run, dsn)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CommandError(f"cannot reach PostgreSQL: {first}") from None
    print(f"migrations: {count} {'rolled back' if rollback else 'applied'}")
    return 0
