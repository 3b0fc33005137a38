"""``echo``: returns the args it was given, as ``{"echo": args}``; for checking the tool path end to end."""

from __future__ import annotations

from typing import Any

from agents.tools.registry import ToolContext, tool


@tool("echo")
async def echo(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    return {"echo": args}
