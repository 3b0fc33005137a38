"""Agent of ``tool.results`` (key: session_id): tool outcomes, sequenced into their session like any event.

Side effects: as ``conversation_inbound``; poison records go to ``tool.results.dlq``.
"""

from __future__ import annotations

from faust.types import StreamT

from agents.context import agent_context
from agents.pipeline import Kind, consume
from app import app
from app.topics import TOOL_RESULTS

KIND = Kind(TOOL_RESULTS, "tool_result", defaults={"type": "tool.result", "role": "tool"})


@app.agent(app.session_topics[TOOL_RESULTS], name="tool_results")
async def tool_results(stream: StreamT[bytes]) -> None:
    await consume(agent_context(app), stream, KIND)
