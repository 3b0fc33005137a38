"""The tool registry, its types, and ``run_tool``: policy check, per-tool timeout, errors turned into outcomes."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from app import events
from app.errors import SomaError
from app.settings import ToolSettings

log = logging.getLogger(__name__)

# the tool_request schema's tool_name pattern: a tool that could never be requested is a bug
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# exception text ends up in a Kafka event; a huge message (a repr of a big object) must not bloat it
MAX_MESSAGE_CHARS = 1000

Status = Literal["ok", "error", "timeout", "blocked"]


@dataclass(frozen=True)
class ToolContext:
    """What every tool may use; built once per worker, so the HTTP connection pool is shared."""

    settings: ToolSettings
    http: aiohttp.ClientSession


ToolFn = Callable[[dict[str, Any], ToolContext], Awaitable[dict[str, Any]]]


class ToolError(SomaError):
    """Raised by a tool to report a clean, expected failure with a stable machine-readable code."""

    def __init__(self, message: str, code: str = "tool_error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class ToolCall:
    """One call as the policy hook sees it, before the tool runs."""

    session_id: str
    tool_name: str
    args: Mapping[str, Any]
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class PolicyDecision:
    allowed: bool
    reason: str = ""


PolicyHook = Callable[[ToolCall], Awaitable[PolicyDecision]]


async def allow_all(call: ToolCall) -> PolicyDecision:
    """The policy without OPA (``SOMA_OPA_URL`` unset): everything is allowed."""
    return PolicyDecision(allowed=True, reason="allow_all")


@dataclass(frozen=True)
class ToolOutcome:
    """What ``run_tool`` returns: the ``status``, ``payload`` and ``execution_time`` of a tool_result."""

    status: Status
    payload: dict[str, Any]
    # seconds (monotonic clock) of the whole run_tool call: policy check plus the tool
    execution_time: float


_TOOLS: dict[str, ToolFn] = {}


def tool(name: str) -> Callable[[ToolFn], ToolFn]:
    """Decorator registering ``fn`` as tool ``name``; a name taken by another function is an error."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"tool name {name!r} does not match {NAME_PATTERN.pattern}")

    def register(fn: ToolFn) -> ToolFn:
        existing = _TOOLS.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"tool {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        _TOOLS[name] = fn
        return fn

    return register


def unregister(name: str) -> None:
    """Remove tool ``name`` if registered (tests register throw-away tools)."""
    _TOOLS.pop(name, None)


def get_tool(name: str) -> ToolFn | None:
    return _TOOLS.get(name)


def tool_names() -> list[str]:
    """The registered tool names, sorted."""
    return sorted(_TOOLS)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message[:MAX_MESSAGE_CHARS]}}


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def run_tool(
    name: str,
    args: dict[str, Any],
    ctx: ToolContext,
    policy: PolicyHook = allow_all,
    *,
    session_id: str,
    metadata: Mapping[str, str],
) -> ToolOutcome:
    """Run tool ``name`` for a session; every failure becomes an outcome, only cancellation propagates."""
    started = time.monotonic()

    def outcome(status: Status, payload: dict[str, Any]) -> ToolOutcome:
        return ToolOutcome(status=status, payload=payload, execution_time=max(0.0, time.monotonic() - started))

    fn = _TOOLS.get(name)
    if fn is None:
        return outcome("error", _error("unknown_tool", f"no tool named {name!r}; known: {', '.join(tool_names())}"))

    seconds = ctx.settings.timeout(name)
    call = ToolCall(session_id=session_id, tool_name=name, args=dict(args), metadata=dict(metadata))
    try:
        # a hung policy service must not hold the executor forever; it fails closed
        async with asyncio.timeout(ctx.settings.timeout_seconds):
            decision = await policy(call)
    except Exception as exc:
        log.warning("policy check of tool %s failed: %s", name, _describe(exc))
        return outcome("blocked", _error("policy_failed", f"policy check failed: {_describe(exc)}"))
    if not decision.allowed:
        return outcome("blocked", _error("policy_denied", decision.reason or f"tool {name!r} is not allowed"))

    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            # a copy: the tool may not alter the args the policy approved or the caller still holds
            # typed object: a tool breaking its contract at run time is reported, not passed on
            result: object = await fn(dict(args), ctx)
    except TimeoutError as exc:
        # our deadline expired; a TimeoutError the tool raised on its own is a plain failure
        if deadline.expired():
            return outcome("timeout", _error("timeout", f"tool {name!r} did not finish within {seconds:g}s"))
        log.warning("tool %s failed", name, exc_info=True)
        return outcome("error", _error("tool_failed", _describe(exc)))
    except ToolError as exc:
        return outcome("error", _error(exc.code, exc.message))
    except Exception as exc:
        log.warning("tool %s failed", name, exc_info=True)
        return outcome("error", _error("tool_failed", _describe(exc)))
    if not isinstance(result, dict):
        return outcome("error", _error("tool_failed", f"tool {name!r} returned {type(result).__name__}, not a dict"))
    try:
        events.encode(result)  # what its tool_result will carry: a value that is not JSON is the tool's failure
    except TypeError as exc:
        return outcome("error", _error("tool_failed", f"tool {name!r} returned a value that is not JSON: {exc}"))
    return outcome("ok", result)
