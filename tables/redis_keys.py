"""Where a table's state lives in Redis: one hash tag, hence one cluster slot, per table partition."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartitionKeys:
    """The keys of one table partition, ``<prefix><app_id>:table:{<table>:<partition>}:<part>``.

    ``data`` is a HASH (changelog key bytes -> value bytes), ``meta`` a HASH with ``offset`` (the changelog
    offset ``data`` is complete up to) and ``size`` (HLEN of ``data`` as last written, to notice lost data),
    ``expires`` a ZSET (key -> deadline in ms) of TTL tables. A full rewrite fills the ``rewrite`` keys of
    its writer, then renames them over ``data``/``expires``.
    """

    base: str

    @property
    def data(self) -> str:
        return f"{self.base}:data"

    @property
    def meta(self) -> str:
        return f"{self.base}:meta"

    @property
    def expires(self) -> str:
        return f"{self.base}:expires"

    def rewrite_data(self, writer: str) -> str:
        return f"{self.base}:rewrite:{writer}:data"

    def rewrite_expires(self, writer: str) -> str:
        return f"{self.base}:rewrite:{writer}:expires"


@dataclass(frozen=True)
class TableKeys:
    """The key layout of one table of one app."""

    prefix: str
    app_id: str
    table: str

    def partition(self, partition: int) -> PartitionKeys:
        # the braces are a Redis Cluster hash tag: every key of a partition lands in one slot, so one script
        # may write them all atomically
        return PartitionKeys(f"{self.prefix}{self.app_id}:table:{{{self.table}:{partition}}}")

    def pattern(self) -> str:
        """A SCAN pattern matching every key of the table (glob characters in names escaped)."""
        return f"{_escape(self.prefix)}{_escape(self.app_id)}:table:{{{_escape(self.table)}:*}}:*"


def _escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
