"""Small Kafka helpers shared by the CLI, the dev stack, the audit and the tests:
topic creation and reading a topic from the beginning to its current end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pipeline import kafka_clients
from pipeline.events import RawRecord
from pipeline.sources.undecodable import DECODE_ERRORS, raw, step_past_undecodable
from pipeline.topology.schema import Broker, Topology

# Bound on asking the consumer where it is in one partition: aiokafka's position() waits,
# without end, for a position it cannot get (a broker gone, an offset reset never answered).
POSITION_TIMEOUT_S = 10.0


def broker_at(bootstrap: str) -> Broker:
    """The broker section for a bare address (scripts given ``--bootstrap``)."""
    return Broker(bootstrap_servers=bootstrap)


async def ensure_topics(broker: Broker, topics: Iterable[str], partitions: int = 4) -> None:
    admin = kafka_clients.admin(broker)
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


async def ensure_topology_topics(topology: Topology, partitions: int = 4) -> None:
    """The topology's input, output, dead-letter (and joined-example) topics (the dev stack,
    tests, scripts)."""
    sink, examples = topology.sink, topology.outcomes.examples_topic
    topics = [*topology.source.topics, sink.topic, sink.dead_letter_topic, *([examples] if examples else [])]
    await ensure_topics(topology.broker, topics, partitions)


async def batches_to_end(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    idle_timeout_s: float = 5.0,
    ends: dict[TopicPartition, int] | None = None,
) -> AsyncIterator[dict[TopicPartition, list[RawRecord]]]:
    """Batches of ``tps`` from the consumer's positions up to the high watermarks as fetches
    report them (not ListOffsets: the embedded broker answers ListOffsets(latest) wrongly
    once records arrive in batches). A record the client cannot decode comes as a marker
    (``undecodable`` set) instead of stopping the read; no progress for ``idle_timeout_s``
    before the end raises TimeoutError, and so does a position lookup past POSITION_TIMEOUT_S.

    Without ``ends`` the end moves with the watermarks: records written while the read goes
    on are read too. With ``ends`` (see fetched_ends) each partition stops at its given end,
    and records at or past it are not handed on: a reader whose work writes back into the
    topic (a re-drive of a cause not fixed) does not chase its own writes."""
    positions = {tp: await read_position(consumer, tp) for tp in tps}  # next offset to hand on
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    while tps:
        if ends is None:
            if await at_end(consumer, tps):
                break
            fetching = tps
        else:
            fetching = [tp for tp in tps if await read_position(consumer, tp) < ends.get(tp, 0)]
            if not fetching:
                break
        try:
            got = await consumer.getmany(*fetching, timeout_ms=200)
            batch = {tp: [raw(m) for m in messages] for tp, messages in got.items()}
        except DECODE_ERRORS:
            batch = await step_past_undecodable(consumer, positions, limit=10_000)
        if ends is not None:
            batch = {tp: [r for r in records if r.offset < ends.get(tp, 0)] for tp, records in batch.items()}
        if any(batch.values()):
            idle_since = loop.time()
        elif loop.time() - idle_since > idle_timeout_s:
            raise TimeoutError(f"{tps[0].topic}: no progress for {idle_timeout_s}s before its end")
        for tp, records in batch.items():
            if records:
                positions[tp] = records[-1].offset + 1
        if batch:
            yield batch
            idle_since = loop.time()  # the caller's time with the batch (a paced re-drive) is not idleness


async def read_to_end(broker: Broker, topic: str, idle_timeout_s: float = 5.0) -> AsyncIterator[RawRecord]:
    """Every record of ``topic`` from its start up to its current end, without a group."""
    consumer = kafka_clients.consumer(broker, client_suffix="-reader", auto_offset_reset="earliest")
    try:
        await consumer.start()
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        seek_to_start(consumer, tps)
        async for batch in batches_to_end(consumer, tps, idle_timeout_s):
            for records in batch.values():
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


async def read_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    """The consumer's next offset in ``tp``; TimeoutError naming the partition when it has
    none within POSITION_TIMEOUT_S."""
    try:
        return int(await asyncio.wait_for(consumer.position(tp), POSITION_TIMEOUT_S))
    except TimeoutError:
        raise TimeoutError(
            f"{tp.topic}[{tp.partition}]: no read position within {POSITION_TIMEOUT_S:.0f} s "
            f"(broker unreachable, or the partition's offsets never answered)"
        ) from None


ENDS_TIMEOUT_S = 10.0  # for a fetch to report every partition's high watermark


async def fetched_ends(
    broker: Broker, tps: list[TopicPartition], timeout_s: float = ENDS_TIMEOUT_S
) -> dict[TopicPartition, int]:
    """high_watermarks on a consumer of its own (no group), for batches_to_end's ``ends``:
    the caller's positions and group stay as they were."""
    if not tps:
        return {}
    consumer = kafka_clients.consumer(broker, client_suffix="-ends", auto_offset_reset="earliest")
    await consumer.start()
    try:
        return await asyncio.wait_for(high_watermarks(consumer, tps, timeout_s), 2 * timeout_s)
    finally:
        await consumer.stop()


async def high_watermarks(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float = ENDS_TIMEOUT_S
) -> dict[TopicPartition, int]:
    """Each partition's end now, as a fetch reports it (its high watermark), not ListOffsets:
    the embedded broker answers ListOffsets(latest) wrongly. ListOffsets' answer only says
    where to fetch from (the end on Kafka, at or below it on the embedded broker), so a
    partition is not read from its start to learn its end. Assigns ``tps`` to the consumer.
    TimeoutError naming the partitions no fetch answered for in ``timeout_s``."""
    if not tps:
        return {}
    hints = await asyncio.wait_for(consumer.end_offsets(tps), timeout_s)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(int(hints.get(tp) or 0) - 1, 0))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(consumer.highwater(tp) is None for tp in tps):
        if loop.time() > deadline:
            missing = [tp.partition for tp in tps if consumer.highwater(tp) is None]
            raise TimeoutError(
                f"{tps[0].topic}: no fetch answered for partitions {missing} in {timeout_s:.0f} s"
            )
        with contextlib.suppress(*DECODE_ERRORS):  # the fetch reports the mark all the same
            await consumer.getmany(*tps, timeout_ms=200, max_records=1)
    return {tp: int(consumer.highwater(tp) or 0) for tp in tps}


async def at_end(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    for tp in tps:
        high = consumer.highwater(tp)
        if high is None or await read_position(consumer, tp) < high:
            return False
    return True
