"""Small Kafka helpers shared by the CLI, the dev stack, the audit and the tests:
topic creation and reading a topic from the beginning to its current end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


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


async def read_to_end(
    bootstrap: str, topic: str, idle_timeout_s: float = 2.0
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` up to the end offsets seen at the start (no group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=int(idle_timeout_s * 1000))
            if not batch:
                raise TimeoutError(f"{topic}: no records for {idle_timeout_s}s before its end")
            for tp, records in batch.items():
                for record in records:
                    yield record
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def wait_for_topics(bootstrap: str, topics: Iterable[str], timeout_s: float = 30.0) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        wanted = set(topics)
        while not wanted <= set(await admin.list_topics()):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"topics {sorted(wanted)} not created in {timeout_s}s")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
