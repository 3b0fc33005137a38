"""``faust -A app stack up|down|status|tools``: the local stack (``make stack-up`` and friends) as a command."""

from __future__ import annotations

import asyncio

from faust.cli import argument

from app import app
from deploy.localstack.__main__ import VERBS, main
from ops.base import CommandError, OpsCommand


@app.command(argument("verb", type=str, default="status", required=False), base=OpsCommand)
async def stack(self: OpsCommand, verb: str) -> int:
    """The local stack: `stack status` (the default) reports Kafka, Redis, PostgreSQL and the workers `make run`
    started; `stack up` starts (or reuses) the servers; `stack down` stops what it started; `stack tools`
    builds the tools the tests need."""
    if verb not in VERBS:
        raise CommandError(f"unknown action {verb!r}: {', '.join(VERBS)}")
    # the stack's own steps block (processes, waits): off this command's event loop
    return await asyncio.to_thread(main, ["stack", verb])
