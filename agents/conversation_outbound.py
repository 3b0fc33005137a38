"""Agent of ``conversation.outbound`` (key: session_id): assistant and system events from any responder.

Side effects: as ``conversation_inbound``; poison records go to ``conversation.outbound.dlq``.
"""

from __future__ import annotations

from faust.types import StreamT

from agents.context import agent_context
from agents.pipeline import Kind, consume
from app import app
from app.topics import CONVERSATION_OUTBOUND

KIND = Kind(CONVERSATION_OUTBOUND, "conversation_event")


@app.agent(app.session_topics[CONVERSATION_OUTBOUND], name="conversation_outbound")
async def conversation_outbound(stream: StreamT[bytes]) -> None:
    await consume(agent_context(app), stream, KIND)
