"""A time range of a topic as a replay source: partition by partition, each from the first
record at or after ``since`` to the last before ``until`` (or the end the partition had when
the replay started). Keys, values and headers are kept, with a ``replay.from`` header naming
the source record.

The start is located with ``offsets_for_times`` and checked against the records themselves;
where the broker answers wrongly (the embedded one does), it is found by binary search on
record timestamps instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import kafka_clients
from pipeline.kafka_io import at_end, seek_to_start, topic_partitions
from pipeline.replay.files import Row
from pipeline.topology.schema import Broker

FETCH_TIMEOUT_MS = 5_000


def epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


async def _timestamp_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> int:
    consumer.seek(tp, offset)
    batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=1)
    records = batch.get(tp, [])
    if not records:
        raise TimeoutError(f"{tp}: no record at offset {offset}")
    return int(records[0].timestamp)


async def first_offset_at(consumer: AIOKafkaConsumer, tp: TopicPartition, ts: int, end: int) -> int:
    """The first offset of ``tp`` whose record timestamp is >= ts (``end`` if none)."""
    begin = (await consumer.beginning_offsets([tp]))[tp]
    answer = (await consumer.offsets_for_times({tp: ts}))[tp]
    if (
        answer is not None
        and begin <= answer.offset < end
        and await _timestamp_at(consumer, tp, answer.offset) >= ts
        and (answer.offset == begin or await _timestamp_at(consumer, tp, answer.offset - 1) < ts)
    ):
        return int(answer.offset)  # the broker's answer checks out against the records
    lo, hi = begin, end  # binary search: record timestamps grow within a partition
    while lo < hi:
        mid = (lo + hi) // 2
        if await _timestamp_at(consumer, tp, mid) < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo


async def high_watermarks(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Each partition's end, as fetches report it (the embedded broker's ListOffsets is wrong)."""
    consumer.assign(tps)
    seek_to_start(consumer, tps)
    while not await at_end(consumer, tps):
        if not await consumer.getmany(timeout_ms=1_000, max_records=1):
            break
    return {tp: consumer.highwater(tp) or 0 for tp in tps}


class TopicRange:
    def __init__(self, broker: Broker, topic: str, since: str | None, until: str | None) -> None:
        self.broker = broker
        self.topic = topic
        self.since = epoch_ms(since) if since else 0
        self.until = epoch_ms(until) if until else 2**62

    @property
    def identity(self) -> str:
        return f"topic:{self.topic}[{self.since},{self.until})"

    async def rows(self, start: int = 0) -> AsyncIterator[Row]:
        """The range's records as rows numbered in read order, from row ``start`` on."""
        consumer = kafka_clients.consumer(self.broker, client_suffix="-replay", auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = await topic_partitions(consumer, self.topic)
            ends = await high_watermarks(consumer, tps)
            number = 0
            for tp in tps:
                position = await first_offset_at(consumer, tp, self.since, ends[tp])
                consumer.seek(tp, position)
                while position < ends[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=1_000)
                    records = batch.get(tp, [])
                    if not records:
                        raise TimeoutError(f"{tp}: no records at offset {position} (end {ends[tp]})")
                    for rec in records:
                        position = rec.offset + 1
                        if rec.offset >= ends[tp] or rec.timestamp >= self.until:
                            position = ends[tp]
                            break
                        if number >= start:
                            origin = f"{tp.topic}:{tp.partition}:{rec.offset}".encode()
                            headers = (*rec.headers, ("replay.from", origin))
                            yield Row(number, rec.value, rec.key, headers)
                        number += 1
        finally:
            await consumer.stop()
