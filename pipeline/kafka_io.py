"""Small Kafka helpers shared by the CLI, the dev stack, the audit and the tests:
topic creation and reading a topic from the beginning to its current end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pipeline.events import RawRecord
from pipeline.sources.undecodable import DECODE_ERRORS, raw, step_past_undecodable


async def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, num_partitions=partitions, replication_factor=1)
            for name in dict.fromkeys(topics)
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
    finally:
        await admin.close()


async def read_to_end(bootstrap: str, topic: str, idle_timeout_s: float = 5.0) -> AsyncIterator[RawRecord]:
    """Every record of ``topic`` up to its high watermark (no group). A record the client
    cannot decode comes as a marker (``undecodable`` set) instead of stopping the read.

    The end is the high watermark reported by fetches, not ListOffsets: the embedded broker
    answers ListOffsets(latest) wrongly once records arrive in batches."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return
        consumer.assign(tps)
        seek_to_start(consumer, tps)
        positions = {tp: 0 for tp in tps}  # next offset to hand on
        idle_since = asyncio.get_running_loop().time()
        while not await at_end(consumer, tps):
            try:
                got = await consumer.getmany(timeout_ms=200)
                batch = {tp: [raw(m) for m in messages] for tp, messages in got.items()}
            except DECODE_ERRORS:
                batch = await step_past_undecodable(consumer, positions, limit=10_000)
            now = asyncio.get_running_loop().time()
            if batch:
                idle_since = now
            elif now - idle_since > idle_timeout_s:
                raise TimeoutError(f"{topic}: no progress for {idle_timeout_s}s before its end")
            for tp, records in batch.items():
                if records:
                    positions[tp] = records[-1].offset + 1
                for record in records:
                    yield record
    finally:
        await consumer.stop()


def seek_to_start(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
    """Offset 0, not ListOffsets(earliest): the embedded broker answers that with the batch
    stored first in time, which is not the first in offsets when producers write a partition
    concurrently (a fresh reader then skipped records the live one had read). Real Kafka
    answers offset 0 past retention with out-of-range, and auto_offset_reset="earliest"
    moves the reader to the true start."""
    for tp in tps:
        consumer.seek(tp, 0)


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        await consumer.topics()  # refreshes metadata: the topic may be brand new
        partitions = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def at_end(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    for tp in tps:
        high = consumer.highwater(tp)
        if high is None or await consumer.position(tp) < high:
            return False
    return True
