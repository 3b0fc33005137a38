"""The Kafka topics of the service, keyed by session id, each with a dead-letter topic."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faust.types import TopicT

    from app.faust_app import SomaApp

CONVERSATION_INBOUND = "conversation.inbound"
CONVERSATION_OUTBOUND = "conversation.outbound"
TOOL_REQUESTS = "tool.requests"
TOOL_RESULTS = "tool.results"
SESSION_TOPICS = (CONVERSATION_INBOUND, CONVERSATION_OUTBOUND, TOOL_REQUESTS, TOOL_RESULTS)
# stored user messages waiting for the responder (agents/responder.py): the queue of replies, so that replies
# beyond a worker's model calls wait in Kafka, not in memory; keyed by session like the others, no dead letters
# (a reply that cannot be made is answered with a failed final)
REPLY_REQUESTS = "reply.requests"


def dead_letter(name: str) -> str:
    return f"{name}.dlq"


class Topics:
    """Every topic declared once on the app, with the configured partition count and replication.

    Values and keys travel as raw bytes: events are JSON validated against ``schemas/`` by our own code,
    so a record that does not decode reaches the agent (and its dead-letter path) instead of being
    dropped inside faust's deserializer.
    """

    def __init__(self, app: SomaApp) -> None:
        settings = app.settings
        self._by_name: dict[str, TopicT] = {}
        # each session topic and its dead letters, and the responder's queue (which has none)
        declared = [
            (topic, dead) for name in SESSION_TOPICS for topic, dead in ((name, False), (dead_letter(name), True))
        ]
        declared.append((REPLY_REQUESTS, False))
        for real, dead_letters in declared:
            self._by_name[real] = app.topic(
                settings.topic(real),
                partitions=settings.topic_partitions,
                replicas=settings.topic_replication,
                config=settings.topic_config(dead_letters),
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                internal=True,
            )

    def __getitem__(self, name: str) -> TopicT:
        return self._by_name[name]

    def all(self) -> list[TopicT]:
        return list(self._by_name.values())
