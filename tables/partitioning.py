"""Tables in the partitions of the session topics, and writing them beside the stream (the changelog partition
is that of the record the change belongs to)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import faust
from faust.streams import _current_event

from app import app

if TYPE_CHECKING:
    from faust.types import EventT, TableT

# keys and values as JSON
SCHEMA: faust.Schema[str, Any] = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")


def session_table(name: str, *, ttl_seconds: float, help: str) -> TableT[str, Any]:
    """A table keyed within a session's partitions, JSON in and out; the store forgets a key ``ttl_seconds``
    after its last write (the redis:// store; memory:// keeps it)."""
    table: TableT[str, Any] = app.Table(
        name,
        default=None,
        partitions=app.settings.topic_partitions,
        schema=SCHEMA,
        options={"ttl": ttl_seconds},
        help=help,
    )
    return table


@contextlib.contextmanager
def in_partition_of(event: EventT[Any]) -> Iterator[None]:
    """Table writes in this block go to the changelog partition of ``event`` (= its session's partition).

    faust picks a key's changelog partition from the current event; batch processors run beside the stream,
    where the current event is another one or none.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
