"""The Kafka sink: writes a SinkBatch and returns once the broker acknowledged every record;
the caller finishes the source offsets only after ``write`` returns. At-least-once: the
idempotent producer is off (the embedded broker does not support it) and every output
carries its source ids.

A refusal is classified. A retriable one (a leader moving, a timeout, the broker away) is
re-sent with backoff, for as long as it takes. A permanent one (a record too large, no
authorization, an invalid topic) never succeeds however often it is sent: a refused
recommendation becomes dead letters of the inputs it answers (reason ``output_refused``); a
refused dead letter cannot go anywhere else, so it is logged, counted and readiness turns
false while it is retried at the slowest pace, instead of spinning.

A topic the broker says does not exist (deleted after the start checked it: ``topics_check``)
is retriable to aiokafka, and is retried here too (it may be made again), but not silently:
readiness turns false, ``pipeline_sink_missing_topics`` counts such topics, and a line says so
every MISSING_LOG_EVERY_S. A record whose every input's partition was revoked meanwhile is not
retried any more: the partition's new owner redoes its inputs.

Each lane has a producer of its own: a producer sends a partition's records in order, so with
one producer a lane's outputs would queue behind a flooded lane's."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterator

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder

from pipeline import kafka_clients
from pipeline.events import DeadLetter, OutputRecord, RawRecord, SinkBatch
from pipeline.metrics import Metrics
from pipeline.operators.enrich import PRODUCER_MAX_REQUEST_BYTES, dead_letter_record
from pipeline.sinks.partitioner import partitions_for
from pipeline.sinks.rounds import Failed, SendRounds
from pipeline.topology.schema import Broker, Sink

log = logging.getLogger(__name__)
DEFAULT = ""  # the producer of dead letters from parsing and of single-lane topologies
REFUSED_RETRY_S = 30.0  # a permanently refused dead letter is tried again this seldom
MISSING_LOG_EVERY_S = 30.0  # a topic missing mid-run is said at most this often


# Refusals that re-sending cannot cure. Named one by one: aiokafka leaves `retriable` unset
# on errors that do pass (KafkaTimeoutError while the broker is away), so the flag alone
# would turn an outage into dead letters.
PERMANENT: tuple[type[KafkaError], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.InvalidTopicError,
    kafka_errors.PolicyViolationError,
    kafka_errors.UnsupportedForMessageFormatError,
)


def permanent(error: BaseException) -> bool:
    return isinstance(error, PERMANENT)


def missing_topic(error: BaseException) -> bool:
    """The broker says the topic does not exist (after aiokafka's own wait of a request
    timeout): retried, but the sink is not ready meanwhile."""
    return isinstance(error, kafka_errors.UnknownTopicOrPartitionError)


ALONE_BYTES = 256 * 1024  # a record this large is sent by itself, and its size checked


async def _partitions(producer: AIOKafkaProducer, topic: str) -> tuple[list[int], list[int]]:
    """Every partition of ``topic`` (sorted, as the default partitioner wants them) and those
    with a leader now (where a keyless record may go)."""
    every = sorted(await producer.partitions_for(topic))
    available = producer.client.cluster.available_partitions_for_topic(topic) or every
    return every, sorted(available)


def _size(rec: OutputRecord) -> int:
    size = len(rec.value) + len(rec.key or b"")
    return (size + sum(len(k) + len(v or b"") for k, v in rec.headers)) if rec.headers else size


def _batches(
    producer: AIOKafkaProducer, records: list[OutputRecord]
) -> Iterator[tuple[list[OutputRecord], BatchBuilder]]:
    """The records in as few batches as fit the producer's batch size, in order."""
    batch, chunk = producer.create_batch(), list[OutputRecord]()
    for rec in records:
        headers = list(rec.headers)
        if batch.append(key=rec.key, value=rec.value, timestamp=None, headers=headers) is None:
            yield chunk, batch  # full
            batch, chunk = producer.create_batch(), []
            if batch.append(key=rec.key, value=rec.value, timestamp=None, headers=headers) is None:
                raise ValueError(f"a {_size(rec)}-byte record does not fit an empty batch")  # < ALONE_BYTES
        chunk.append(rec)
    if chunk:
        yield chunk, batch


class KafkaSink:
    def __init__(
        self,
        spec: Sink,
        broker: Broker,
        lanes: list[str] | None = None,
        max_backoff_s: float = 5.0,
        metrics: Metrics | None = None,
        owned: Callable[[RawRecord], bool] | None = None,
    ) -> None:
        self.spec = spec
        self.max_backoff_s = max_backoff_s
        self.metrics = metrics or Metrics()
        self._owned = owned  # an input's partition still this member's (Partitions.is_current)
        self._refused: dict[int, int] = {}  # write in progress → dead letters refused in it
        self._missing: dict[int, set[str]] = {}  # write in progress → topics missing in its last pass
        self._missing_said: dict[str, float] = {}  # topic → when its absence was last logged
        self._broker = broker
        self._lanes = [DEFAULT, *(lanes or [])]
        self.producers: dict[str, AIOKafkaProducer] = {}  # made at start: none to leak before
        self._rounds: dict[int, SendRounds] = {}  # per producer: concurrent writes sent together
        self._acked: dict[tuple[str, int], int] = {}  # highest offset acknowledged per partition

    @staticmethod
    def _producer(spec: Sink, broker: Broker) -> AIOKafkaProducer:
        return kafka_clients.producer(
            broker,
            client_suffix="-sink",
            acks="all",
            linger_ms=spec.linger_ms,
            max_batch_size=1_048_576,
            max_request_size=PRODUCER_MAX_REQUEST_BYTES,  # what a dead letter is cut to fit
            compression_type=None if spec.compression == "none" else spec.compression,
            request_timeout_ms=30_000,
        )

    def _rounds_of(self, producer: AIOKafkaProducer) -> SendRounds:
        rounds = self._rounds.get(id(producer))
        if rounds is None:
            rounds = self._rounds[id(producer)] = SendRounds(functools.partial(self._send_all, producer))
        return rounds

    async def start(self) -> None:
        self.producers = {lane: self._producer(self.spec, self._broker) for lane in self._lanes}
        for producer in self.producers.values():
            await producer.start()

    async def _send_all(self, producer: AIOKafkaProducer, records: list[OutputRecord]) -> Failed:
        """Send, wait for every acknowledgement; return the records that failed, with why.

        Records go out as one batch per partition (aiokafka's batch API: one future per
        batch; a future per record was about a tenth of the process's CPU), keyed records to
        the partition the default partitioner would pick. A batch refused for good is sent
        again record by record, so that only the record at fault is refused; a large record
        goes alone from the start (the producer checks its size)."""
        groups, alone, failed = await self._by_partition(producer, records)
        sent: list[tuple[list[OutputRecord], asyncio.Future[object]]] = []
        for (topic, partition), group in groups.items():
            for chunk, batch in _batches(producer, group):
                try:
                    sent.append((chunk, await producer.send_batch(batch, topic, partition=partition)))
                except KafkaError as exc:
                    failed.extend((rec, exc) for rec in chunk)
        for chunk, fut in sent:
            try:
                self._note_acked(await fut, len(chunk))
            except KafkaError as exc:
                if permanent(exc) and len(chunk) > 1:
                    failed.extend(await self._send_each(producer, chunk))
                else:
                    failed.extend((rec, exc) for rec in chunk)
        failed.extend(await self._send_each(producer, alone))  # rare: after the rest
        return failed

    def _note_acked(self, metadata: object, records: int) -> None:
        """A batch's acknowledgement: its base offset, ``records`` long."""
        offset = getattr(metadata, "offset", None)
        if offset is None or offset < 0:
            return
        key = (metadata.topic, metadata.partition)  # type: ignore[attr-defined]
        self._acked[key] = max(self._acked.get(key, -1), offset + records - 1)

    def acked_offset(self, topic: str, partition: int) -> int | None:
        return self._acked.get((topic, partition))

    @staticmethod
    async def _by_partition(
        producer: AIOKafkaProducer, records: list[OutputRecord]
    ) -> tuple[dict[tuple[str, int], list[OutputRecord]], list[OutputRecord], Failed]:
        """Records by (topic, partition), in their order; the large ones, to send alone; and
        those of a topic whose partitions cannot be had (only theirs fail: a missing dead
        letter topic must not take the recommendations of the same round with it)."""
        partitions: dict[str, tuple[list[int], list[int]] | BaseException] = {}
        groups: dict[tuple[str, int], list[OutputRecord]] = {}
        alone: list[OutputRecord] = []
        failed: Failed = []
        by_topic: dict[str, tuple[tuple[list[int], list[int]], list[OutputRecord]]] = {}
        for rec in records:
            if _size(rec) > ALONE_BYTES:
                alone.append(rec)
                continue
            known = partitions.get(rec.topic)
            if known is None:
                try:
                    known = partitions[rec.topic] = await _partitions(producer, rec.topic)
                except KafkaError as exc:
                    known = partitions[rec.topic] = exc
            if isinstance(known, BaseException):
                failed.append((rec, known))
                continue
            by_topic.setdefault(rec.topic, (known, []))[1].append(rec)
        for topic, ((every, available), chunk) in by_topic.items():
            named = [rec.partition for rec in chunk]
            if None in named:  # the changelog's records name theirs: no hashing
                hashed = partitions_for([rec.key for rec in chunk], every, available)
                named = [h if n is None else n for h, n in zip(hashed, named, strict=True)]
            for rec, partition in zip(chunk, named, strict=True):
                groups.setdefault((topic, partition or 0), []).append(rec)
        return groups, alone, failed

    async def _send_each(self, producer: AIOKafkaProducer, records: list[OutputRecord]) -> Failed:
        """One send per record: each refusal is the record's own."""
        futures: list[asyncio.Future[object] | None] = []
        failed: Failed = []
        for rec in records:
            try:
                futures.append(
                    await producer.send(
                        rec.topic, rec.value, key=rec.key, headers=list(rec.headers), partition=rec.partition
                    )
                )
            except KafkaError as exc:
                failed.append((rec, exc))
                futures.append(None)
        for rec, fut in zip(records, futures, strict=True):
            if fut is None:
                continue
            try:
                self._note_acked(await fut, 1)
            except KafkaError as exc:
                failed.append((rec, exc))
        return failed

    def _instead(self, rec: OutputRecord, error: BaseException) -> list[OutputRecord]:
        """What to send instead of a permanently refused recommendation."""
        detail = f"{rec.topic} refused a {len(rec.value)}-byte output: {error!r}"
        log.error("%s; its %d inputs are dead-lettered as output_refused", detail, len(rec.sources))
        return [
            dead_letter_record(
                DeadLetter(src, "output_refused", type(error).__name__, detail), self.spec.dead_letter_topic
            )
            for src in rec.sources
        ]

    @property
    def refusing(self) -> bool:
        """A dead letter is being refused right now, or a topic written to is missing
        (readiness turns false)."""
        return any(self._refused.values()) or any(self._missing.values())

    @property
    def missing_topics(self) -> set[str]:
        """Topics the broker says do not exist, as the writes in progress last found."""
        return set().union(*self._missing.values())

    async def write(self, batch: SinkBatch) -> list[OutputRecord]:
        """Write ``batch``; returns the records written (refused recommendations replaced,
        records of inputs revoked while they were retried left out)."""
        token = id(batch)
        try:
            return await self._write(batch, token)
        finally:
            self._refused.pop(token, None)
            if self._missing.pop(token, None):
                self.metrics.sink_missing_topics.set(len(self.missing_topics))

    def _still_owned(self, records: list[OutputRecord]) -> list[OutputRecord]:
        """``records`` less those whose every input's partition this member no longer owns
        (records naming no input, the changelog's, stay)."""
        owned = self._owned
        if owned is None:
            return records
        kept = [rec for rec in records if not rec.sources or any(map(owned, rec.sources))]
        if len(kept) < len(records):
            dropped = len(records) - len(kept)
            self.metrics.revoked_outputs_dropped.inc(dropped)
            log.info("%d records not retried: their inputs' partitions were revoked", dropped)
        return kept

    def _say_missing(self, token: int, failed: list[tuple[OutputRecord, BaseException]]) -> None:
        """Readiness, the gauge, and a line per topic at most every MISSING_LOG_EVERY_S."""
        missing: dict[str, int] = {}
        for rec, error in failed:
            if missing_topic(error):
                missing[rec.topic] = missing.get(rec.topic, 0) + 1
        before = self._missing.get(token, set())
        self._missing[token] = set(missing)
        if before or missing:
            self.metrics.sink_missing_topics.set(len(self.missing_topics))
        now = time.monotonic()
        for topic, records in missing.items():
            if now - self._missing_said.get(topic, float("-inf")) >= MISSING_LOG_EVERY_S:
                self._missing_said[topic] = now
                log.error(
                    "TOPIC MISSING: the broker says %s does not exist; %d records for it are "
                    "retried (not ready) until it is made again",
                    topic,
                    records,
                )

    @staticmethod
    async def _unknown_topics(producer: AIOKafkaProducer, records: list[OutputRecord]) -> Failed:
        """The records of topics whose partitions cannot be had, with why. Looked up before a
        write joins a send round, so that a lookup that waits (aiokafka waits up to its
        request timeout for a topic that does not exist) holds only this write."""
        failed: Failed = []
        for topic in {rec.topic for rec in records}:
            try:
                await producer.partitions_for(topic)  # at once when the producer knows the topic
            except KafkaError as exc:
                failed.extend((rec, exc) for rec in records if rec.topic == topic)
        return failed

    async def _write(self, batch: SinkBatch, token: int) -> list[OutputRecord]:
        producer = self.producers.get(batch.lane) or self.producers[DEFAULT]
        pending, written = list(batch.records), list[OutputRecord]()
        backoff = 0.1
        first = True
        while pending:
            if not first and not (pending := self._still_owned(pending)):
                break
            first = False
            failed = await self._unknown_topics(producer, pending)  # looked up here, not in a round
            unknown = {id(rec) for rec, _ in failed}
            if sendable := [rec for rec in pending if id(rec) not in unknown]:
                failed += await self._rounds_of(producer).send(sendable)
            failed_ids = {id(rec) for rec, _ in failed}
            written.extend(rec for rec in pending if id(rec) not in failed_ids)
            pending = []
            refused = 0
            self._say_missing(token, failed)
            for rec, error in failed:
                self.metrics.sink_errors.labels(rec.topic, type(error).__name__).inc()
                if not permanent(error):
                    if not missing_topic(error):  # said above, at a bounded pace
                        log.warning("delivery to %s failed, will retry: %r", rec.topic, error)
                    pending.append(rec)
                elif rec.topic != self.spec.dead_letter_topic and rec.sources:
                    pending.extend(self._instead(rec, error))
                else:
                    log.error(
                        "%s REFUSED by %s: %r; retrying every %.0f s",
                        "DEAD LETTER" if rec.topic == self.spec.dead_letter_topic else "RECORD",
                        rec.topic,
                        error,
                        REFUSED_RETRY_S,
                    )
                    pending.append(rec)
                    refused += 1
            self._refused[token] = refused
            if refused:
                await asyncio.sleep(REFUSED_RETRY_S)
            elif any(not permanent(e) for _, e in failed):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
        return written

    async def stop(self) -> None:
        for producer in self.producers.values():
            await producer.stop()
