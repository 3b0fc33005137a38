"""Writing a table beside the stream: the changelog partition is that of the record the change belongs to."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from faust.streams import _current_event

if TYPE_CHECKING:
    from faust.types import EventT


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
