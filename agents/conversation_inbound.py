"""Agent of ``conversation.inbound`` (key: session_id): client messages, stored as their session's next seq.

Side effects: batched transactions in Postgres (``session_events`` + ``session_envelopes``), the
``session_state`` table, the session feed in Redis; poison records go to ``conversation.inbound.dlq``.
"""

from __future__ import annotations

from faust.types import StreamT

from agents.context import agent_context
from agents.pipeline import Kind, consume
from agents.responder import request_replies
from app import app
from app.topics import CONVERSATION_INBOUND

# with SOMA_SLM_URL set, each stored user message is queued for the responder (agents/responder.py)
KIND = Kind(CONVERSATION_INBOUND, "conversation_event", after_store=request_replies)


@app.agent(app.session_topics[CONVERSATION_INBOUND], name="conversation_inbound")
async def conversation_inbound(stream: StreamT[bytes]) -> None:
    await consume(agent_context(app), stream, KIND)
