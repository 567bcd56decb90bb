"""`pipeline redrive`: send dead letters of chosen reasons back into the input topic once
their cause is fixed. The original key, value and headers are sent as they were (the dlq.*
headers dropped, a ``redrive.from`` header added), to the input topic each came from.
Progress is committed per batch, per reason, in a consumer group of its own: running it
again, or after a crash, does not re-send what was re-driven. It shares the replay's
machinery: pacing (--rate) and progress (a bar on a terminal, log lines otherwise). Dead letters holding a
truncated copy of their input (value or headers) are counted, not re-driven."""

from __future__ import annotations

import asyncio
from collections import Counter

from pipeline import kafka_clients
from pipeline.kafka_io import batches_to_end, topic_partitions
from pipeline.operators.enrich import DLQ_HEADER_PREFIX
from pipeline.replay.progress import Counts, Pacer, Progress
from pipeline.topology.schema import Topology


def redrive_group(topology: Topology, reason: str) -> str:
    return f"{topology.source.group_id}.redrive.{reason}"


async def redrive_reason(
    topology: Topology,
    reason: str,
    dry_run: bool = False,
    idle_timeout_s: float = 5.0,
    rate: float = 0.0,
    progress: Progress | None = None,
) -> Counter[str]:
    """Re-drive the dead letters of ``reason``, at most ``rate`` per second (0: as fast as
    acknowledged), with the replay's progress lines."""
    counts: Counter[str] = Counter()
    progress = progress or Progress(None, bar=False)
    pacer = Pacer(rate)
    tally = Counts()
    consumer = kafka_clients.consumer(
        topology.broker,
        client_suffix="-redrive",
        group_id=redrive_group(topology, reason),
        auto_offset_reset="earliest",
    )
    producer = kafka_clients.producer(topology.broker, client_suffix="-redrive", linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        tps = await topic_partitions(consumer, topology.sink.dead_letter_topic)
        consumer.assign(tps)  # from the group's commit: what earlier runs re-drove is skipped
        inputs = set(topology.source.topics)
        async for batch in batches_to_end(consumer, tps, idle_timeout_s):
            pending = []
            for records in batch.values():
                for rec in records:
                    if rec.undecodable is not None:
                        counts["undecodable"] += 1
                        continue
                    headers = dict(rec.headers)
                    if headers.get("dlq.reason", b"").decode() != reason:
                        counts["skipped"] += 1
                        continue
                    if "dlq.truncated_from" in headers or "dlq.headers_dropped" in headers:
                        counts["not_redriven_truncated"] += 1  # a partial copy: re-drive from the source
                        continue
                    counts["redriven"] += 1
                    if dry_run:
                        continue
                    await pacer.wait(counts["redriven"])
                    # Back where it came from (a backfill's dead letter goes to the backfill topic).
                    origin = headers.get("dlq.source_topic", b"").decode()
                    target = origin if origin in inputs else topology.source.topics[0]
                    kept = [(k, v) for k, v in rec.headers if not k.startswith(DLQ_HEADER_PREFIX)]
                    kept.append(("redrive.from", f"{rec.topic}:{rec.partition}:{rec.offset}".encode()))
                    pending.append(await producer.send(target, rec.value, key=rec.key, headers=kept))
            if not dry_run:
                # Progress is committed as it goes, each batch once its re-sends are acknowledged:
                # a crash half-way re-sends at most one batch.
                await asyncio.gather(*pending)
                await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs})
            tally.read = sum(counts.values())
            tally.sent = tally.acknowledged = 0 if dry_run else counts["redriven"]
            tally.skipped = tally.read - counts["redriven"]
            progress.update(tally, tally.read)
    finally:
        await producer.stop()
        await consumer.stop()
    return counts


async def redrive(
    topology: Topology,
    reasons: list[str],
    dry_run: bool = False,
    rate: float = 0.0,
    progress_bar: bool | None = None,
) -> dict[str, object]:
    report: dict[str, object] = {"dry_run": dry_run}
    for reason in reasons:
        progress = Progress(None, bar=progress_bar)
        try:
            report[reason] = dict(
                await redrive_reason(topology, reason, dry_run, rate=rate, progress=progress)
            )
        finally:
            progress.close()
    return report
