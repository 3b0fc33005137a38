"""``faust -A app replay TOPIC``: copy a range of a topic's records into a target topic (the same by default).

The range is per partition: from ``--from-offset`` (with ``--partition``) or the first record at or after
``--from-time`` (else the earliest kept), up to ``--to-offset`` (exclusive) or the first record at or after
``--to-time`` (else the end offset when the command starts: replaying a topic into itself never chases its own
copies). Keys, values, headers and timestamps are kept; a record goes to the same partition when the target has
as many, else where its key hashes. The sinks are idempotent (an event is stored once by its event id), so
replaying stored events adds no rows; they are processed again all the same (a tool request re-runs only when
its earlier run is no longer remembered). A progress bar (rate, ETA) on a terminal, then a summary.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.cli import argument, option

from app import app
from ops import kafka
from ops.base import FAILED, CommandError, OpsCommand, iso_time


@dataclass(frozen=True)
class Span:
    """Offsets ``start`` (inclusive) to ``stop`` (exclusive) of one partition."""

    tp: TopicPartition
    start: int
    stop: int

    @property
    def count(self) -> int:
        return max(self.stop - self.start, 0)


async def _at_time(client: AIOKafkaConsumer, tps: list[TopicPartition], at: float) -> dict[TopicPartition, int]:
    """Per partition, the offset of the first record at or after time ``at`` (the end offset when none is)."""
    found = await client.offsets_for_times({tp: int(at * 1000) for tp in tps})
    end = await client.end_offsets(tps)
    return {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in tps}


async def _spans(
    client: AIOKafkaConsumer,
    topic: str,
    partition: int | None,
    from_offset: int | None,
    to_offset: int | None,
    from_time: float | None,
    to_time: float | None,
) -> list[Span]:
    partitions = kafka.partitions_of(client, topic)
    if partition is not None and partition not in partitions:
        raise CommandError(f"{topic} has no partition {partition} (it has {len(partitions)}: 0..{partitions[-1]})")
    if (from_offset is not None or to_offset is not None) and partition is None and len(partitions) > 1:
        raise CommandError("--from-offset and --to-offset are offsets of one partition: name it with --partition")
    tps = [TopicPartition(topic, p) for p in partitions if partition is None or p == partition]
    first = await client.beginning_offsets(tps)
    end = await client.end_offsets(tps)
    start = await _at_time(client, tps, from_time) if from_time is not None else dict(first)
    stop = await _at_time(client, tps, to_time) if to_time is not None else dict(end)
    for tp in tps:
        for name, offset, bound in (("--from-offset", from_offset, start), ("--to-offset", to_offset, stop)):
            if offset is None:
                continue
            if not first[tp] <= offset <= end[tp]:
                raise CommandError(
                    f"{name} {offset} is out of range for {topic}[{tp.partition}] (earliest {first[tp]}, end {end[tp]})"
                )
            bound[tp] = offset
    return [Span(tp, start[tp], stop[tp]) for tp in tps]


async def _copy(
    client: AIOKafkaConsumer, spans: list[Span], sink: str, same_layout: bool, pace: kafka.Pace, total: int, label: str
) -> int:
    """Copy the spans' records to ``sink``, acks awaited batch by batch (a window of sends in flight)."""
    copied = 0
    async with kafka.producer() as producer:
        with kafka.progress(total, f"replaying {label}", pace) as bar:
            pending = {span.tp: span for span in spans if span.count}
            while pending:
                batch = await client.getmany(*pending, timeout_ms=1000)
                sent = []
                for tp, records in batch.items():
                    for record in records:
                        if record.offset >= pending[tp].stop:
                            break
                        sent.append(
                            await producer.send(
                                sink,
                                key=record.key,
                                value=record.value,
                                partition=tp.partition if same_layout else None,
                                timestamp_ms=record.timestamp,
                                headers=list(record.headers),
                            )
                        )
                        await pace.tick()
                    if await client.position(tp) >= pending[tp].stop:
                        del pending[tp]
                await asyncio.gather(*sent)
                copied += len(sent)
                if bar is not None:
                    bar.update(len(sent), True)
    return copied


@app.command(
    argument("topic", type=str),
    option("--partition", type=int, default=None, help="only this partition (needed for --from/--to-offset)"),
    option("--from-offset", type=int, default=None, help="first offset to copy [default: the earliest kept]"),
    option("--to-offset", type=int, default=None, help="stop before this offset [default: the end at the start]"),
    option("--from-time", default=None, help="first record at or after this ISO 8601 time"),
    option("--to-time", default=None, help="stop at the first record at or after this ISO 8601 time"),
    option("--to", "target", default=None, help="target topic [default: TOPIC itself]"),
    option("--rate", type=float, default=0.0, help="at most this many records per second (0: no limit)"),
    option("--dry-run", is_flag=True, default=False, help="say what would be copied, copy nothing"),
    base=OpsCommand,
)
async def replay(
    self: OpsCommand,
    topic: str,
    partition: int | None,
    from_offset: int | None,
    to_offset: int | None,
    from_time: str | None,
    to_time: str | None,
    target: str | None,
    rate: float,
    dry_run: bool,
) -> int:
    """Copy a range of TOPIC's records (keys, headers, timestamps kept) into --to (TOPIC by default)."""
    if (from_offset is not None and from_time is not None) or (to_offset is not None and to_time is not None):
        raise CommandError("give a start by offset or by time, and an end by offset or by time, not both")
    if any(value is not None and value < 0 for value in (partition, from_offset, to_offset)):
        raise CommandError("--partition, --from-offset and --to-offset must be >= 0")
    since, until = (iso_time(name, raw) for name, raw in (("--from-time", from_time), ("--to-time", to_time)))
    source = kafka.real_topic(topic)
    sink = kafka.real_topic(target) if target is not None else source
    pace = kafka.Pace(rate)
    async with kafka.consumer() as client:
        spans = await _spans(client, source, partition, from_offset, to_offset, since, until)
        sink_partitions = kafka.partitions_of(client, sink)
        total = sum(span.count for span in spans)
        plan = ", ".join(f"[{s.tp.partition}] {s.start}..{s.stop}" for s in spans)
        if dry_run:
            print(f"dry run: would copy {total} record(s) from {source} {plan} to {sink}")
            return 0
        same_layout = sink_partitions == kafka.partitions_of(client, source)
        client.assign([span.tp for span in spans if span.count])
        for span in spans:
            if span.count:
                client.seek(span.tp, span.start)
        began = time.monotonic()
        try:
            copied = await _copy(client, spans, sink, same_layout, pace, total, source)
        except KafkaError as exc:
            raise CommandError(f"the broker failed mid-replay (records sent so far stay sent): {exc}", FAILED) from None
    seconds = time.monotonic() - began
    print(
        f"replayed {copied} record(s) from {source} {plan} to {sink} in {seconds:.1f} s "
        f"({copied / max(seconds, 1e-6):,.0f}/s)"
    )
    return 0
