"""The changelog: a compacted topic, keyed by user, one partition per input partition,
holding each user's latest history. Written in rounds by ``ChangelogWriter``; read back by
a restore through a ``ChangelogReader`` (Kafka's here; the testing kit's reads what its
sink captured).

A round takes every store's changes and sends the histories as they are at that moment.
Rounds run one at a time, so a later round always carries a user's newer history (a
retried round is the same round, not overtaken): the last record of a user, the one
compaction keeps, is the newest. A write waits (``persisted``) for a round that began
after its state changes; only then are its inputs finished and committable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import NamedTuple, Protocol

from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import OffsetOutOfRangeError, TopicAlreadyExistsError

from pipeline import kafka_clients
from pipeline.errors import Fatal
from pipeline.events import OutputRecord, SinkBatch
from pipeline.kafka_io import batches_to_end, topic_partitions
from pipeline.metrics import Metrics
from pipeline.state.histories import HistoryStore
from pipeline.topology.schema import Broker

log = logging.getLogger(__name__)
WAIT_FOR_WORK_S = 1.0  # the writer's idle wait (bounded: it looks at stop again)
CHANGELOG_CONFIG = {"cleanup.policy": "compact"}


class ChangelogEntry(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes | None


class ChangelogReset(Exception):
    """The changelog no longer holds the offset a store had reached (deleted or recreated):
    the store is dropped and restored from the start."""


class ChangelogReader(Protocol):
    topic: str

    async def prepare(self, input_topics: list[str]) -> None:
        """The changelog exists with the inputs' partition count (made if missing); a
        mismatch is a Fatal error naming both."""

    def read(
        self, partition: int, start: int, stall_s: float
    ) -> AsyncGenerator[tuple[list[ChangelogEntry], int], None]:
        """Batches from ``start`` to the partition's end, each with the end seen (the lag).
        No progress for ``stall_s``: TimeoutError; ``start`` past the end: ChangelogReset."""
        ...


class KafkaChangelog:
    def __init__(self, broker: Broker, topic: str, replication_factor: int) -> None:
        self.broker = broker
        self.topic = topic
        self.replication_factor = replication_factor

    async def partition_counts(self, topics: list[str]) -> dict[str, int]:
        consumer = kafka_clients.consumer(self.broker, client_suffix="-state")
        await consumer.start()
        try:
            return {topic: len(await topic_partitions(consumer, topic)) for topic in topics}
        finally:
            # aiokafka's stop awaits a task of the consumer's that may not have begun yet
            # (every topic known from start: nothing awaited) and raises its CancelledError
            await asyncio.sleep(0)
            await consumer.stop()

    async def prepare(self, input_topics: list[str]) -> None:
        counts = await self.partition_counts([*input_topics, self.topic])
        inputs = {topic: counts[topic] for topic in input_topics}
        if 0 in inputs.values():
            missing = sorted(t for t, n in inputs.items() if n == 0)
            raise Fatal(
                f"state: input topics {missing} do not exist (the changelog takes their partition count)"
            )
        if len(set(inputs.values())) > 1:
            raise Fatal(
                f"state: input topics must have one partition count (a user's key, one partition): {inputs}"
            )
        wanted = next(iter(inputs.values()))
        have = counts[self.topic]
        if have and have != wanted:
            raise Fatal(f"state: changelog {self.topic} has {have} partitions, the inputs {wanted}")
        if not have:
            await self._create(wanted)
            log.info("made changelog topic %s (%d partitions, compacted)", self.topic, wanted)

    async def _create(self, partitions: int) -> None:
        admin = kafka_clients.admin(self.broker)
        await admin.start()
        try:
            topic = NewTopic(self.topic, partitions, self.replication_factor, topic_configs=CHANGELOG_CONFIG)
            with contextlib.suppress(TopicAlreadyExistsError):  # another member made it meanwhile
                await admin.create_topics([topic])
        finally:
            await admin.close()

    async def read(
        self, partition: int, start: int, stall_s: float
    ) -> AsyncGenerator[tuple[list[ChangelogEntry], int], None]:
        # From 0 the log's start is wherever it is; from an offset a store reached, a
        # changelog that no longer has it must be told apart (out of range: reset).
        reset = "earliest" if start == 0 else "none"
        consumer = kafka_clients.consumer(self.broker, client_suffix="-restore", auto_offset_reset=reset)
        await consumer.start()
        tp = TopicPartition(self.topic, partition)
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            try:
                async for batch in batches_to_end(consumer, [tp], stall_s):
                    records = batch.get(tp, [])
                    if records:
                        entries = [ChangelogEntry(r.offset, r.key, r.value) for r in records]
                        yield entries, consumer.highwater(tp) or records[-1].offset + 1
            except OffsetOutOfRangeError as exc:
                raise ChangelogReset(f"{self.topic}[{partition}] has no offset {start}") from exc
            high = consumer.highwater(tp)
            if high is not None and high < start:
                raise ChangelogReset(f"{self.topic}[{partition}] ends at {high}, the store reached {start}")
        finally:
            await consumer.stop()


class ChangelogWriter:
    def __init__(
        self,
        topic: str,
        stores: Callable[[], dict[int, HistoryStore]],
        write: Callable[[SinkBatch], Awaitable[list[OutputRecord]]],
        acked: Callable[[str, int], int | None],
        metrics: Metrics,
    ) -> None:
        self.topic = topic
        self._stores = stores
        self._write = write
        self._acked = acked
        self.metrics = metrics
        self.lock = asyncio.Lock()  # one round at a time (a release's last round included)
        self._started = 0
        self._completed = 0
        self._wanted = asyncio.Event()
        self._progress = asyncio.Condition()

    async def persisted(self) -> None:
        """Returns once a round begun after this call is acknowledged: every state change
        made before it is in the changelog."""
        target = self._started + 1
        self._wanted.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._completed >= target)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wanted.wait(), WAIT_FOR_WORK_S)
            except TimeoutError:
                continue
            self._wanted.clear()
            self._started += 1
            started = self._started
            async with self.lock:
                try:
                    await self.round()
                except BaseException:
                    self._wanted.set()  # the waiters' round is still owed: the next one takes it
                    raise
            self._completed = started
            async with self._progress:
                self._progress.notify_all()

    async def round(self, partitions: set[int] | None = None) -> int:
        """Every change of the stores (of ``partitions`` only, if given) sent, acknowledged,
        then on disk with the offset acknowledged; returns how many records. The caller
        holds ``lock``."""
        stores = {p: s for p, s in self._stores().items() if partitions is None or p in partitions}
        taken = {p: store.take_changed() for p, store in stores.items()}
        records = tuple(
            OutputRecord(self.topic, key, blob, (), partition=p)
            for p, changed in taken.items()
            for key, blob in changed.items()
        )
        if records:
            await self._write(SinkBatch(records))
            self.metrics.state_changelog_records.inc(len(records))
        for p, store in stores.items():
            if taken[p]:
                store.stored(self._acked(self.topic, p))
        return len(records)
