"""Agent of ``conversation.inbound`` (key: session_id): stores each event as its session's next seq.

Side effects: one transaction per event in Postgres (``session_events`` + ``session_envelopes``);
poison records go to ``conversation.inbound.dlq``.
"""

from __future__ import annotations

from typing import Any

from faust.types import StreamT

from agents.boundary import process
from app import app
from app.repository import Source, store_event
from app.topics import CONVERSATION_INBOUND


async def store(event: dict[str, Any], source: Source) -> None:
    await store_event(await app.resources.postgres(), event, source)


@app.agent(app.session_topics[CONVERSATION_INBOUND], name="conversation_inbound")
async def conversation_inbound(stream: StreamT[bytes]) -> None:
    async for event in stream.events():
        await process(app, event, "conversation_event", store)
