"""Replay events for a backfill: from a JSONL file, or from a time range of a topic, into
the backfill topology's input topic (topologies/backfill.yaml reads it at low priority).

    python scripts/replay.py --file events.jsonl --to interactions.backfill
    python scripts/replay.py --topic interactions --since 2026-11-25T10:00:00Z \\
        --until 2026-11-25T11:00:00Z --to interactions.backfill --bootstrap 127.0.0.1:9092

A time range is located per partition with ``offsets_for_times``, checked against the
records themselves; where the broker answers wrongly (the embedded one does), the start is
found by binary search on record timestamps instead. Keys, values and headers are copied
as they are, with a ``replay.from`` header naming the source record.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline import kafka_clients
from pipeline.kafka_io import at_end, broker_at, ensure_topics, seek_to_start, topic_partitions


def epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


async def _timestamp_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> int:
    consumer.seek(tp, offset)
    batch = await consumer.getmany(tp, timeout_ms=5_000, max_records=1)
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
    consumer.assign(tps)
    seek_to_start(consumer, tps)
    while not await at_end(consumer, tps):
        if not await consumer.getmany(timeout_ms=1_000, max_records=1):
            break
    return {tp: consumer.highwater(tp) or 0 for tp in tps}


async def replay_topic(args: argparse.Namespace, producer: AIOKafkaProducer) -> int:
    consumer = kafka_clients.consumer(
        broker_at(args.bootstrap), client_suffix="-replay", auto_offset_reset="earliest"
    )
    await consumer.start()
    sent = 0
    try:
        tps = await topic_partitions(consumer, args.topic)
        ends = await high_watermarks(consumer, tps)
        since = epoch_ms(args.since) if args.since else 0
        until = epoch_ms(args.until) if args.until else 2**62
        pending = []
        for tp in tps:
            start = await first_offset_at(consumer, tp, since, ends[tp])
            consumer.seek(tp, start)
            position = start
            while position < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=5_000, max_records=1_000)
                records = batch.get(tp, [])
                if not records:
                    break
                for rec in records:
                    position = rec.offset + 1
                    if rec.offset >= ends[tp] or rec.timestamp >= until:
                        position = ends[tp]
                        break
                    headers = [
                        *rec.headers,
                        ("replay.from", f"{tp.topic}:{tp.partition}:{rec.offset}".encode()),
                    ]
                    pending.append(await producer.send(args.to, rec.value, key=rec.key, headers=headers))
                    sent += 1
        await asyncio.gather(*pending)
    finally:
        await consumer.stop()
    return sent


async def replay_file(args: argparse.Namespace, producer: AIOKafkaProducer) -> int:
    pending = []
    for line in Path(args.file).read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            key = str(orjson.loads(line).get("user_id", "")).encode() or None
        except (orjson.JSONDecodeError, AttributeError):
            key = None  # replayed as is: the pipeline dead-letters what it cannot parse
        pending.append(await producer.send(args.to, line, key=key))
    await asyncio.gather(*pending)
    return len(pending)


async def main_async(args: argparse.Namespace) -> int:
    await ensure_topics(broker_at(args.bootstrap), [args.to], args.partitions)
    producer = kafka_clients.producer(broker_at(args.bootstrap), client_suffix="-replay", linger_ms=10)
    await producer.start()
    try:
        return await (replay_file(args, producer) if args.file else replay_topic(args, producer))
    finally:
        await producer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="JSONL file of events")
    source.add_argument("--topic", help="topic to replay a time range of")
    parser.add_argument("--since", help="ISO time, inclusive (topic replay)")
    parser.add_argument("--until", help="ISO time, exclusive (topic replay)")
    parser.add_argument("--to", required=True, help="destination topic (the backfill input)")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--partitions", type=int, default=4, help="if the destination is new")
    args = parser.parse_args()
    sent = asyncio.run(main_async(args))
    print(orjson.dumps({"replayed": sent, "to": args.to}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
