"""A time range of a topic as a replay source: partition by partition, the records stamped
in [since, until). Keys, values and headers are kept, with a ``replay.from`` header naming
the source record.

Each partition's range is a span of offsets fixed at start, read to its end; within it each
record is judged by its own timestamp, and one outside [since, until) is skipped and counted
(``outside_time_range``) without ending the read. Producer timestamps need not be in order
(two producers' clocks, a retried batch): the span is found for a time range widened by
``disorder_ms`` (default 60 s, ``--disorder-ms``) at both ends:

- first offset: the first record stamped at or after ``since - disorder_ms``;
- end offset: the first record stamped at or after ``until + disorder_ms``, and never past the
  end the partition had when the replay started (without ``--until``: that end).

If no record is more than ``disorder_ms`` out of order (for offsets i < j, ts(j) >=
ts(i) - disorder_ms), no in-range record lies outside that span: every record before the first
offset is stamped before ``since``, every one from the end offset on at or after ``until``
(the search stops where the record before is stamped below the bound and the record there at
or above it). The read stays bounded: at most the records of ``disorder_ms`` past each end of
the range are read and skipped. A record more out of order than that, near either end, can
still be missed; raise ``--disorder-ms`` for such a topic.

An offset is located with ``offsets_for_times`` and checked against the records themselves;
where the broker answers wrongly (the embedded one does), it is found by binary search on
record timestamps instead.

A record the Kafka client cannot decode (a header key that is not UTF-8, a bad CRC) does not
stop the read: it is stepped past as the pipeline's source does (``step_past_undecodable``),
and handed on as a row to reject (reason ``undecodable_record``, with its coordinates), which
the replay writes to its reject file and counts. Its timestamp cannot be read, so it is
rejected wherever it sits in the span.

The offsets located on the first run are kept in the checkpoint and used again on resume,
and a row's number is its place in them (a partition's rows follow the previous partition's
offsets): records that arrive in the source topic meanwhile, or a start found again after
retention moved, never renumber the rows a resumed run skips by.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import kafka_clients
from pipeline.events import RawRecord
from pipeline.kafka_io import high_watermarks, read_position, topic_partitions
from pipeline.replay.files import Row
from pipeline.replay.mapping import iso_to_epoch_ms
from pipeline.replay.rejects import UNDECODABLE
from pipeline.sources.undecodable import DECODE_ERRORS, raw, step_past_undecodable
from pipeline.topology.schema import Broker

FETCH_TIMEOUT_MS = 5_000
DISORDER_MS = 60_000  # how far out of order record timestamps may be (see the docstring)
STEP_LIMIT = 10_000  # records re-read one by one after a decode error, at most
Offsets = dict[int, tuple[int, int]]  # partition → (first offset of the range, end)


async def _timestamp_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, end: int) -> int:
    """The timestamp of the first record at or after ``offset``; past every record before
    ``end`` (only transaction markers or compacted-away offsets left): later than any time.
    A record the client cannot decode has no timestamp to give: the next one's is taken."""
    while True:
        consumer.seek(tp, offset)
        try:
            batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=1)
            break
        except DECODE_ERRORS:
            offset = await read_position(consumer, tp) + 1  # (the position is the bad record)
            if offset >= end:
                return 2**63
    records = batch.get(tp, [])
    if not records:
        if await read_position(consumer, tp) >= end:
            return 2**63
        raise TimeoutError(f"{tp}: no record at offset {offset}")
    return int(records[0].timestamp)


async def first_offset_at(consumer: AIOKafkaConsumer, tp: TopicPartition, ts: int, end: int) -> int:
    """The first offset of ``tp`` whose record timestamp is >= ts (``end`` if none)."""
    begin = (await consumer.beginning_offsets([tp]))[tp]
    answer = (await consumer.offsets_for_times({tp: ts}))[tp]
    if (
        answer is not None
        and begin <= answer.offset < end
        and await _timestamp_at(consumer, tp, answer.offset, end) >= ts
        and (answer.offset == begin or await _timestamp_at(consumer, tp, answer.offset - 1, end) < ts)
    ):
        return int(answer.offset)  # the broker's answer checks out against the records
    lo, hi = begin, end  # binary search: record timestamps grow within a partition
    while lo < hi:
        mid = (lo + hi) // 2
        if await _timestamp_at(consumer, tp, mid, end) < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo


class TopicRange:
    def __init__(
        self,
        broker: Broker,
        topic: str,
        since: str | None,
        until: str | None,
        disorder_ms: int = DISORDER_MS,
    ) -> None:
        self.broker = broker
        self.topic = topic
        # ISO 8601, naive text as UTC (as in a mapping)
        self.since = iso_to_epoch_ms(since) if since else 0
        self.until = iso_to_epoch_ms(until) if until else 2**62
        self.bounded = until is not None
        self.disorder_ms = max(int(disorder_ms), 0)
        self.offsets: Offsets | None = None  # located once, or given back by a checkpoint

    @property
    def identity(self) -> str:
        return f"topic:{self.topic}[{self.since},{self.until})"

    def _consumer(self) -> AIOKafkaConsumer:
        return kafka_clients.consumer(self.broker, client_suffix="-replay", auto_offset_reset="earliest")

    async def locate(self) -> Offsets:
        """Per partition, the span to read (see the module's docstring): the first offset
        stamped at or after ``since - disorder_ms``, and the first at or after ``until +
        disorder_ms`` or the end the partition has now, whichever comes first."""
        if self.offsets is None:
            consumer = self._consumer()
            await consumer.start()
            try:
                tps = await topic_partitions(consumer, self.topic)
                ends = await high_watermarks(consumer, tps)
                self.offsets = {}
                for tp in tps:
                    first = await first_offset_at(
                        consumer, tp, max(self.since - self.disorder_ms, 0), ends[tp]
                    )
                    end = ends[tp]
                    if self.bounded and first < end:
                        end = await first_offset_at(consumer, tp, self.until + self.disorder_ms, end)
                    self.offsets[tp.partition] = (first, max(end, first))
            finally:
                await consumer.stop()
        return self.offsets

    async def rows(self, start: int = 0) -> AsyncIterator[Row]:
        """The spans' records as rows, from row ``start`` on. A row's number is its offset's
        place in the located offsets, partition after partition (numbers of offsets that hold
        no record are left unused). A record stamped outside [since, until) is a row without
        a value (``outside_time_range``); one the client cannot decode a row to reject."""
        offsets = await self.locate()
        consumer = self._consumer()
        await consumer.start()
        try:
            base = 0
            for partition, (first, end) in sorted(offsets.items()):
                span, base = end - first, base + max(end - first, 0)
                if base <= start or span <= 0:
                    continue
                tp = TopicPartition(self.topic, partition)
                consumer.assign([tp])
                position = first + max(start - (base - span), 0)
                consumer.seek(tp, position)
                while position < end:
                    records = await self._fetch(consumer, tp, position, end)
                    if not records:
                        if await read_position(consumer, tp) >= end:
                            break  # the rest are not records (transaction markers, compacted away)
                        raise TimeoutError(f"{tp}: no records at offset {position} (end {end})")
                    for rec in records:
                        if rec.offset < position:
                            continue
                        if rec.offset >= end:
                            position = end
                            break
                        position = rec.offset + 1
                        yield self._row(base - span + rec.offset - first, rec)
        finally:
            await consumer.stop()

    async def _fetch(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, position: int, end: int
    ) -> list[RawRecord]:
        """The next records from ``position``; after a decode error, re-read one at a time
        from there, the record that raised as a marker (``undecodable`` set)."""
        try:
            batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=1_000)
            return [raw(m) for m in batch.get(tp, [])]
        except DECODE_ERRORS:
            limit = max(min(end - position, STEP_LIMIT), 1)
            read = await step_past_undecodable(consumer, {tp: position}, limit, wait_ms=FETCH_TIMEOUT_MS)
            return read.get(tp, [])

    def _row(self, number: int, rec: RawRecord) -> Row:
        origin = f"{rec.topic}:{rec.partition}:{rec.offset}".encode()
        if rec.undecodable is not None:
            return Row(number, None, None, (("replay.from", origin),), reject=(UNDECODABLE, rec.undecodable))
        if not self.since <= rec.timestamp_ms < self.until:
            return Row(number, None, None, outside_time_range=True)
        return Row(number, rec.value, rec.key, (*rec.headers, ("replay.from", origin)))
