"""Backoff between retries: one named policy per boundary, so every loop that waits out a failure says which."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: ``first`` seconds, doubled after every further failure, at most ``cap``."""

    first: float
    cap: float

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(f"backoff needs 0 < first <= cap, got first={self.first}, cap={self.cap}")

    def delays(self) -> Iterator[float]:
        """The waits after the 1st, 2nd, ... failure of one run of attempts (a fresh iterator per run)."""
        delay = self.first
        while True:
            yield delay
            delay = min(delay * 2, self.cap)


# Postgres, Redis or Kafka failing on the event path (store, feed publish, dead letters) and in HTTP reads:
# retried until they answer (the agents hold the partition; views stop at SOMA_READ_DEADLINE_SECONDS)
INFRASTRUCTURE = Backoff(first=0.1, cap=5.0)
# an event failing for no known reason, tried alone a few times before it is dead-lettered
UNKNOWN_ERROR = Backoff(first=0.2, cap=1.6)
# the session feed's Redis subscription, lost and subscribed again
FEED_RECONNECT = Backoff(first=0.1, cap=5.0)
# a table partition's copy read from Redis at recovery (given up after the store's load timeout)
TABLE_LOAD = Backoff(first=0.2, cap=5.0)
# the tables' changes written behind to Redis after a failed write (kept in memory meanwhile)
TABLE_FLUSH = Backoff(first=0.5, cap=5.0)
# the session and dead-letter topics declared at start-up, while the broker is not ready
TOPIC_DECLARE = Backoff(first=0.5, cap=10.0)
