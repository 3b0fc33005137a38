"""Agent of ``tool.requests`` (key: session_id): the tool executor.

Each request is stored as its session's next seq, then its tool runs (per-tool timeout, policy hook first)
and a ``tool_result`` is published to ``tool.results`` before the request is acknowledged. The result's
event_id is derived from the request's, so a request replayed after a crash yields the same result event,
which the store keeps once. A tool runs at most once per request: the request is marked started in the
``tool_runs`` table (tables/tool_runs.py) before its tool runs, and a replayed request that is marked but has
no stored result is answered ``interrupted``. Poison requests go to ``tool.requests.dlq``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

from faust.types import StreamT

from agents.boundary import retry_transient
from agents.context import AgentContext, agent_context
from agents.pipeline import Kind, consume
from agents.tools import PolicyDecision, PolicyHook, ToolCall, ToolContext, ToolOutcome, allow_all, run_tool
from app import app, events, tracing
from app.repository import BatchResult, Incoming, stored_ids
from app.topics import TOOL_REQUESTS, TOOL_RESULTS
from tables.tool_runs import mark_started, started

# results are named by uuid5(request event_id) in this namespace
RESULT_NAMESPACE = uuid.UUID("6f1d1c52-0d0e-4a6e-9f3e-5b8e2c1a7d40")


def result_id(request_event_id: str) -> str:
    return str(uuid.uuid5(RESULT_NAMESPACE, request_event_id))


def result_event(request: dict[str, Any], outcome: ToolOutcome, max_bytes: int) -> dict[str, Any]:
    """The ``tool_result`` event answering ``request``; a payload too large for a record becomes an error."""
    event = {
        "event_id": result_id(request["event_id"]),
        "session_id": request["session_id"],
        "persona_id": request.get("persona_id"),
        "type": "tool.result",
        "role": "tool",
        "request_id": request["event_id"],
        "tool_name": request["tool_name"],
        "status": outcome.status,
        "payload": outcome.payload,
        "execution_time": outcome.execution_time,
        "metadata": dict(request.get("metadata") or {}),
        "trace_context": dict(request.get("trace_context") or {}),
        "version": events.EVENT_VERSION,
        "occurred_at": events.now_iso(),
    }
    if len(events.encode(event)) > max_bytes:
        message = f"the tool's result exceeds SOMA_MAX_EVENT_BYTES={max_bytes}"
        event.update(status="error", payload={"error": {"code": "result_too_large", "message": message}})
    return event


INTERRUPTED = ToolOutcome(
    status="error",
    payload={
        "error": {
            "code": "interrupted",
            "message": "the worker running this tool stopped before its result was stored; a tool is never run twice",
        }
    },
    execution_time=0.0,
)


async def execute(ctx: AgentContext, request: dict[str, Any]) -> None:
    outcome = await run_tool(
        request["tool_name"],
        dict(request["args"]),
        ToolContext(settings=ctx.tools, http=ctx.resources.http()),
        opa_hook(ctx) if ctx.policy.enabled else allow_all,
        session_id=request["session_id"],
        metadata=request.get("metadata") or {},
    )
    await answer(ctx, request, outcome)


def opa_hook(ctx: AgentContext) -> PolicyHook:
    """The tool decision of OPA: its input is the tool, its args, the session and the request's claims.

    The claims are those the service merged into the request's metadata from the caller's token (tenant,
    subject, issuer, scope); a request produced straight to Kafka carries what its producer wrote.
    """

    async def decide(call: ToolCall) -> PolicyDecision:
        md = call.metadata
        claims = {
            "tenant": md.get("tenant"),
            "sub": md.get("subject"),
            "iss": md.get("issuer"),
            "scope": md.get("scope"),
        }
        document = {
            "tool": {"name": call.tool_name, "args": dict(call.args)},
            "session_id": call.session_id,
            "claims": {name: value for name, value in claims.items() if value is not None},
        }
        decision = await ctx.policy.decide(ctx.tool_decision_path, document)
        reason = (
            decision.reason if decision.decision_id is None else f"{decision.reason} (decision {decision.decision_id})"
        )
        return PolicyDecision(allowed=decision.allowed, reason=reason)

    return decide


async def answer(ctx: AgentContext, request: dict[str, Any], outcome: ToolOutcome) -> None:
    event = result_event(request, outcome, ctx.tools.max_event_bytes)
    # the tool ran once; only the publish is retried
    await retry_transient("publish tool result", lambda: ctx.send(TOOL_RESULTS, event, "tool_result"))


async def run_requests(ctx: AgentContext, result: BatchResult, items: list[Incoming]) -> None:
    """Run the tool of every request of the batch that has no stored result and was never started.

    A request started before (its worker died, or its batch failed, before the result was stored) is
    answered ``interrupted``. Every call of the batch finishes, or is answered, before a failure of one
    is raised: the batch is then retried one request at a time, and none of its tools runs again.
    """
    requests = {item.event["event_id"]: item for item in items}
    pool = await ctx.resources.postgres()
    answered = await retry_transient("read stored results", lambda: stored_ids(pool, [result_id(e) for e in requests]))
    unanswered = [(eid, item) for eid, item in requests.items() if result_id(eid) not in answered]
    marked = {eid for eid, item in unanswered if started(eid, item.origin)}
    interrupted = [item for eid, item in unanswered if eid in marked]
    new = [(eid, item) for eid, item in unanswered if eid not in marked]
    if new:
        await retry_transient("mark tool runs started", lambda: mark_started([(eid, item.origin) for eid, item in new]))
    # each call within its request's processing span (when traces are on): its decision and result are children
    await all_finished(
        [
            *(tracing.within(item.span, answer(ctx, item.event, INTERRUPTED)) for item in interrupted),
            *(tracing.within(item.span, execute(ctx, item.event)) for _, item in new),
        ]
    )


async def all_finished(calls: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``calls`` together; once every one has finished, raise the first failure.

    A failing call never cancels its siblings: a tool cancelled mid-run would be answered ``interrupted``
    when its batch is retried although it did run, and one that had not reached its tool would not run at all.
    """
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


KIND = Kind(
    TOOL_REQUESTS, "tool_request", defaults={"type": "tool.request", "role": "assistant"}, after_store=run_requests
)


@app.agent(app.session_topics[TOOL_REQUESTS], name="tool_requests")
async def tool_requests(stream: StreamT[bytes]) -> None:
    await consume(agent_context(app), stream, KIND)
