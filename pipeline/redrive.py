"""`pipeline redrive`: send dead letters of chosen reasons back into the input topic once
their cause is fixed. The original key, value and headers are sent as they were (the dlq.*
headers dropped, a ``redrive.from`` header added). Progress is kept per reason in a
consumer group of its own, so running it again does not re-send what was re-driven."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.kafka_io import at_end, topic_partitions
from pipeline.operators.enrich import DLQ_HEADER_PREFIX
from pipeline.topology.schema import Topology


def redrive_group(topology: Topology, reason: str) -> str:
    return f"{topology.source.group_id}.redrive.{reason}"


async def redrive_reason(
    topology: Topology, reason: str, dry_run: bool = False, idle_timeout_s: float = 5.0
) -> Counter[str]:
    bootstrap = topology.broker.bootstrap_servers
    counts: Counter[str] = Counter()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=redrive_group(topology, reason),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        tps = await topic_partitions(consumer, topology.sink.dead_letter_topic)
        consumer.assign(tps)
        pending = []
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while tps and not await at_end(consumer, tps):
            batch = await consumer.getmany(timeout_ms=200)
            if batch:
                idle_since = loop.time()
            elif loop.time() - idle_since > idle_timeout_s:
                raise TimeoutError("dead-letter topic: no progress before its end")
            for records in batch.values():
                for rec in records:
                    headers = list(rec.headers)
                    if dict(headers).get("dlq.reason", b"").decode() != reason:
                        counts["skipped"] += 1
                        continue
                    counts["redriven"] += 1
                    if dry_run:
                        continue
                    kept = [(k, v) for k, v in headers if not k.startswith(DLQ_HEADER_PREFIX)]
                    kept.append(("redrive.from", f"{rec.topic}:{rec.partition}:{rec.offset}".encode()))
                    pending.append(
                        await producer.send(topology.source.topics[0], rec.value, key=rec.key, headers=kept)
                    )
        await asyncio.gather(*pending)  # every re-sent record acknowledged before the commit
        if not dry_run and tps:
            await consumer.commit({tp: await consumer.position(tp) for tp in tps if consumer.highwater(tp)})
    finally:
        await producer.stop()
        await consumer.stop()
    return counts


async def redrive(topology: Topology, reasons: list[str], dry_run: bool = False) -> dict[str, object]:
    report: dict[str, object] = {"dry_run": dry_run}
    for reason in reasons:
        report[reason] = dict(await redrive_reason(topology, reason, dry_run))
    return report
