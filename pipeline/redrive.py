"""`pipeline redrive`: send dead letters of chosen reasons back into the input topic once
their cause is fixed. The original key, value and headers are sent as they were (the dlq.*
headers dropped, a ``redrive.from`` header added), to the input topic each came from.
Progress is committed per batch, per reason, in a consumer group of its own: running it
again, or after a crash, does not re-send what was re-driven. It shares the replay's
machinery: pacing (--rate) and progress (a bar on a terminal, log lines otherwise). Dead letters holding a
truncated copy of their input (value or headers) are counted, not re-driven.

Each run has a fixed end: the dead-letter topic's end when it starts. A reason whose cause is
not fixed yet sends its events back to the dead-letter topic; those new dead letters wait for
the next run instead of being re-driven again and again.

Only the reasons the pipeline writes are accepted (KNOWN_REASONS): a typo would re-drive
nothing while reporting success. Problems at start are RedriveError, one line naming the
topology key: a dead-letter or input topic missing is exit 2 (a verdict no retry changes); no
broker answering (refused, timed out) is exit 1, as a broker that is away may be back soon."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections import Counter

from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
)

from pipeline import kafka_clients
from pipeline.errors import InferenceError, StaleEvent
from pipeline.kafka_io import batches_to_end, fetched_ends, topic_partitions
from pipeline.operators.enrich import DLQ_HEADER_PREFIX
from pipeline.replay.progress import Counts, Pacer, Progress
from pipeline.topology.schema import Topology

# Reasons of an input that cannot become an event (operators/parse.py's InvalidEvent).
INPUT_REASONS = (
    "undecodable_record",
    "empty",
    "missing_key",
    "oversized",
    "malformed_json",
    "wrong_type",
    "missing_field",
    "unknown_type",
    "key_not_user",
    "out_of_range",
    "future_timestamp",
    "too_old",
    "late_event",
)
OUTPUT_REASONS = ("output_refused",)  # sinks/kafka.py: the broker refused the recommendation


def _model_reasons() -> set[str]:
    """The inference errors' reasons (triton/dispatcher.py dead-letters with ``err.reason``)."""
    found, todo = {StaleEvent.reason}, [InferenceError]
    while todo:
        cls = todo.pop()
        found.add(cls.reason)
        todo.extend(cls.__subclasses__())
    return found


# What a broker that is not (yet) answering raises at start.
BROKER_AWAY = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)

KNOWN_REASONS = frozenset(INPUT_REASONS) | frozenset(OUTPUT_REASONS) | frozenset(_model_reasons())


def reason_argument(text: str) -> str:
    """argparse type of --reason: one of KNOWN_REASONS, else one line listing them."""
    if text not in KNOWN_REASONS:
        known = ", ".join(sorted(KNOWN_REASONS))
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a dead-letter reason the pipeline writes; known: {known}"
        )
    return text


class RedriveError(Exception):
    """A problem at start: one line naming the topology key. Exit 2 (a verdict no retry
    changes: a missing topic) unless ``exit_code`` says 1 (transient: no broker answering)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


async def check_topics(topology: Topology, dry_run: bool) -> list[TopicPartition]:
    """The broker answers and the dead-letter topic (and, to send, the input topics) exist.
    Returns the dead-letter topic's partitions."""
    consumer = kafka_clients.consumer(topology.broker, client_suffix="-redrive")
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # its own line per failed connection: ours says it once
    try:
        await consumer.start()
    except (KafkaError, OSError, TimeoutError) as err:
        with contextlib.suppress(Exception):
            await consumer.stop()
        where = topology.broker.bootstrap_servers
        # Refused or timed out: the broker is away, and may be back (exit 1). Anything else
        # at the handshake (an authentication refused) stays a verdict (exit 2).
        if isinstance(err, (*BROKER_AWAY, OSError, TimeoutError)):
            raise RedriveError(
                f"broker.bootstrap_servers: nothing answers at {where} ({type(err).__name__})",
                exit_code=1,
            ) from None
        raise RedriveError(
            f"broker.bootstrap_servers: {where} refused the client ({type(err).__name__}: {err})"
        ) from None
    finally:
        client_log.setLevel(level)
    try:
        topics = await consumer.topics()
        dead_letters = topology.sink.dead_letter_topic
        if dead_letters not in topics:
            raise RedriveError(f"sink.dead_letter_topic: no topic {dead_letters!r} on the broker")
        missing = [] if dry_run else [t for t in topology.source.topics if t not in topics]
        if missing:
            raise RedriveError(f"source.topics: no topic {missing[0]!r} on the broker to re-drive into")
        return await topic_partitions(consumer, dead_letters)
    finally:
        await consumer.stop()


def redrive_group(topology: Topology, reason: str) -> str:
    return f"{topology.source.group_id}.redrive.{reason}"


async def redrive_reason(
    topology: Topology,
    reason: str,
    dry_run: bool = False,
    idle_timeout_s: float = 5.0,
    rate: float = 0.0,
    progress: Progress | None = None,
    ends: dict[TopicPartition, int] | None = None,
) -> Counter[str]:
    """Re-drive the dead letters of ``reason`` up to ``ends`` (default: the dead-letter
    topic's end now), at most ``rate`` per second (0: as fast as acknowledged), with the
    replay's progress lines."""
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
        # A fixed end: the dead letters this run's re-sends cause (a cause not fixed yet)
        # are left for the next run, not chased.
        if ends is None:
            ends = await fetched_ends(topology.broker, tps)
        consumer.assign(tps)  # from the group's commit: what earlier runs re-drove is skipped
        inputs = set(topology.source.topics)
        async for batch in batches_to_end(consumer, tps, idle_timeout_s, ends=ends):
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
    unknown = [r for r in reasons if r not in KNOWN_REASONS]
    if unknown:
        raise RedriveError(f"--reason: {unknown[0]!r} is not a dead-letter reason the pipeline writes")
    # One end for every reason: one reason's re-sends may come back as another's.
    ends = await fetched_ends(topology.broker, await check_topics(topology, dry_run))
    report: dict[str, object] = {"dry_run": dry_run}
    for reason in reasons:
        progress = Progress(None, bar=progress_bar)
        try:
            report[reason] = dict(
                await redrive_reason(topology, reason, dry_run, rate=rate, progress=progress, ends=ends)
            )
        finally:
            progress.close()
    return report
