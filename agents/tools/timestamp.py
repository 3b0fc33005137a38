"""``timestamp``: the current UTC time as ``{"iso": "...Z", "epoch": seconds}``; takes no args."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agents.tools.registry import ToolContext, ToolError, tool


@tool("timestamp")
async def timestamp(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    if args:
        raise ToolError(f"timestamp takes no args, got {', '.join(sorted(args))}", "invalid_args")
    # one clock reading for both fields, so they always agree
    now = datetime.now(UTC)
    return {"iso": now.isoformat(timespec="microseconds").replace("+00:00", "Z"), "epoch": now.timestamp()}
