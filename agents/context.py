"""What the batching agents use of their worker, and nothing more: a settings slice, connections, topics."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.metrics import Metrics
from app.policy import Policy
from app.publish import send_event
from app.resources import Resources
from app.settings import AgentSettings, ResponderSettings, ToolSettings
from app.storage_lag import StorageLag
from app.topics import Topics

if TYPE_CHECKING:
    from app.faust_app import SomaApp

# publish an event to a logical topic after validating it against a schema; returns the broker's metadata
Send = Callable[[str, dict[str, Any], str], Awaitable[Any]]


@dataclass(frozen=True)
class AgentContext:
    """An agent's view of its worker; the pipeline, the boundary and the tool executor take only this."""

    settings: AgentSettings
    tools: ToolSettings
    resources: Resources  # Postgres pool, Redis client, HTTP client, the store lock
    storage_lag: StorageLag  # told which offsets are stored
    topics: Topics  # the dead-letter topics
    send: Send  # the worker's producer (the tool executor's results)
    policy: Policy  # OPA (asked before a tool runs when SOMA_OPA_URL is set)
    tool_decision_path: str
    metrics: Metrics  # batches stored, dead letters
    responder: ResponderSettings  # the model server (agents/responder.py)


def agent_context(app: SomaApp) -> AgentContext:
    """The agents' context of ``app``, built when an agent starts."""
    return AgentContext(
        settings=app.settings.agents(),
        tools=app.settings.tools(),
        resources=app.resources,
        storage_lag=app.storage_lag,
        topics=app.session_topics,
        send=functools.partial(send_event, app),
        policy=app.policy,
        tool_decision_path=app.settings.opa_tool_decision_path,
        metrics=app.metrics,
        responder=app.settings.responder(),
    )
