"""Tools of the tool executor: one module per tool, each registering itself with ``@tool(name)`` on import."""

from __future__ import annotations

import importlib
import pkgutil

from agents.tools.registry import (
    PolicyDecision,
    PolicyHook,
    ToolCall,
    ToolContext,
    ToolError,
    ToolFn,
    ToolOutcome,
    allow_all,
    get_tool,
    run_tool,
    tool,
    tool_names,
    unregister,
)

__all__ = [
    "PolicyDecision",
    "PolicyHook",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolFn",
    "ToolOutcome",
    "allow_all",
    "get_tool",
    "run_tool",
    "tool",
    "tool_names",
    "unregister",
]

# importing the package registers every tool, so a new tool is just a new module here
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
