"""The Kafka source: an aiokafka consumer group member that hands lists of records on and
holds (then pauses) topics under backpressure. What it takes, finishes and commits is
decided by the partitions' owner (sources/partitions.py); this module does the consumer's
I/O. Auto-commit is off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, InconsistentGroupProtocolError, KafkaError

from pipeline import kafka_clients
from pipeline.errors import SourceFailed
from pipeline.events import RawRecord
from pipeline.metrics import Metrics, PartitionReading
from pipeline.sources.assignment import member_assignors
from pipeline.sources.credits import records_bytes
from pipeline.sources.partitions import PartitionKey, Partitions
from pipeline.sources.undecodable import is_undecodable, raw, step_past_undecodable
from pipeline.topology.schema import Broker, Source

log = logging.getLogger(__name__)
EMIT_SLICE = 256  # records per synchronous pass through the operator chain
FETCH_RETRY_S = 1.0  # wait after a retriable fetch error
FETCH_ERROR_LOG_EVERY = 30  # failed fetches in a row between two warnings (a long outage)
START_LOOKUP_S = 5.0  # bound on asking the broker where a partition's records start
# A topic at its high watermark is first only held: not taken from, while aiokafka keeps the
# fetch it has buffered for it. Pausing it in the consumer drops that buffer (aiokafka
# discards a paused partition's fetched records), so every pause/resume cycle of a backlog
# re-fetched up to a fetch per partition and parsed it again. A topic held this long is
# paused for real, so that the loop can go on polling (group membership) while it waits.
# While other topics flow, a full one is paused at once: aiokafka holds back a broker's next
# fetch (for every partition on it) up to 100 ms while a fresh buffer waits unconsumed, and
# the live topic beside a flooded backfill must not wait for that.
PAUSE_AFTER_S = 5.0
HOLD_CHECK_S = 0.01  # while every topic is held: how often credits are looked at again


async def _pause(stop: asyncio.Event) -> None:
    """FETCH_RETRY_S, or less if the source is stopped meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), FETCH_RETRY_S)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.source.partitions.release({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.source.assigned(assigned)


class KafkaSource:
    def __init__(
        self,
        spec: Source,
        broker: Broker,
        partitions: Partitions,
        metrics: Metrics,
        pause_after_s: float = PAUSE_AFTER_S,
    ) -> None:
        self.spec = spec
        # Held this long, a topic is paused in the consumer; well inside max_poll_interval_ms,
        # since the loop does not poll while every topic is only held.
        self.pause_after_s = min(pause_after_s, spec.max_poll_interval_ms / 1000.0 / 4)
        self.held: set[str] = set()  # topics at their high watermark: nothing taken of them
        self.paused_in_consumer: set[str] = set()  # held topics paused in the consumer too
        # Partitions paused while their state is restored: a paused partition's fetched
        # records are dropped and its position kept, so nothing of it is skipped meanwhile.
        self.paused_for_restore: set[TopicPartition] = set()
        # The end of the last getmany: aiokafka's idle time towards max_poll_interval_ms. A
        # rebalance does not reset it, so holds across rebalances cannot outlast the bound.
        self.last_poll = time.monotonic()
        self.partitions = partitions
        self.credits = partitions.credits
        self.metrics = metrics
        self._turn = 0
        self._failed_fetches = 0  # in a row
        self.consumer = kafka_clients.consumer(
            broker,
            group_id=spec.group_id,
            auto_offset_reset=spec.auto_offset_reset,
            max_poll_records=spec.max_poll_records,
            fetch_max_wait_ms=spec.fetch_max_wait_ms,
            session_timeout_ms=spec.session_timeout_ms,
            heartbeat_interval_ms=spec.heartbeat_interval_ms,
            max_poll_interval_ms=spec.max_poll_interval_ms,
            partition_assignment_strategy=member_assignors(spec.offer_round_robin),
        )
        partitions.commit_with(self._commit_offsets)

    async def start(self) -> None:
        self.consumer.subscribe(self.spec.topics, listener=_Rebalance(self))
        try:
            await self.consumer.start()
        except InconsistentGroupProtocolError as error:
            raise SourceFailed(
                f"group {self.spec.group_id}: its members offer no partition assignment this one "
                "offers (members of a release before co-partitioned assignment, with "
                "source.offer_round_robin off?): stop them first or turn it on"
            ) from error

    async def run(self, emit: Callable[[list[RawRecord]], None], stop: asyncio.Event) -> None:
        # Every pass re-applies backpressure, so a rebalance that un-pauses partitions is
        # noticed. While every topic is only held the loop does not poll; at pause_after_s
        # without a poll the held topics are paused and the loop polls again (paused
        # partitions are not fetched): a poll keeps the member in its group.
        while not stop.is_set():
            self._hold_restoring()
            self._apply_backpressure()
            try:
                fetched = await self._fetch()
                if self._failed_fetches:
                    log.info("fetching again after %d failed attempts", self._failed_fetches)
                    self._failed_fetches = 0
            except Exception as error:
                fetched = await self._after_fetch_error(error, stop)
            records: list[RawRecord] = []
            assigned = self.consumer.assignment()  # a fetch can outlast a rebalance
            for tp, taken in fetched.items():
                key = (tp.topic, tp.partition)
                if not self.partitions.taking(key) or tp not in assigned or not taken:
                    if taken and tp in assigned and self.partitions.restoring(key):
                        # fetched in the poll that assigned it, before it could be paused:
                        # read again once its state is restored
                        self.consumer.seek(tp, taken[0].offset)
                    continue  # being handed to another member: it re-reads from our commit
                offsets = [r.offset for r in taken]
                self.partitions.take(key, offsets, self.consumer.highwater(tp), records_bytes(taken))
                records.extend(taken)
            if records:
                self.metrics.in_flight_events.set(self.credits.in_flight)
                # The RxPY chain runs synchronously per emit: hand a large fetch on in slices,
                # yielding between them so completions (and their latency readings) are not
                # held up behind a long burst.
                for start in range(0, len(records), EMIT_SLICE):
                    emit(records[start : start + EMIT_SLICE])
                    if start + EMIT_SLICE < len(records):
                        await asyncio.sleep(0)

    def assigned(self, assigned: list[TopicPartition]) -> None:
        """A new generation. New assignments start unpaused in the consumer: forget which
        topics were held and paused, so that the next pass holds (and later pauses) the full
        ones again."""
        self.partitions.assign((tp.topic, tp.partition) for tp in assigned)
        self.held.clear()
        self.paused_in_consumer.clear()
        self.paused_for_restore.clear()
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    def generation_of(self, tp: TopicPartition) -> int:
        return self.partitions.generation_of((tp.topic, tp.partition))

    async def _start_of(self, tp: TopicPartition) -> int:
        """The next offset this source has not taken from ``tp``: its own position, else the
        group's commit (where the fetches of this assignment began), else the log's start
        (aiokafka's position may have run past records a failed call never handed out)."""
        taken = self.partitions.positions.get((tp.topic, tp.partition))
        if taken is not None:
            return taken
        committed = await asyncio.wait_for(self.consumer.committed(tp), START_LOOKUP_S)
        if committed is not None:
            return int(committed)
        if self.spec.auto_offset_reset == "earliest":
            return int((await asyncio.wait_for(self.consumer.beginning_offsets([tp]), START_LOOKUP_S))[tp])
        return int(await asyncio.wait_for(self.consumer.position(tp), START_LOOKUP_S))

    async def _re_read(self, stop: asyncio.Event) -> dict[TopicPartition, list[RawRecord]]:
        starts = {}
        for tp in self.consumer.assignment():
            if tp.topic in self.held or not self.partitions.taking((tp.topic, tp.partition)):
                continue
            starts[tp] = await self._start_of(tp)
        try:
            return await step_past_undecodable(
                self.consumer,
                starts,
                2 * self.spec.max_poll_records,
                stop,
                generation_of=self.generation_of,
                fetch_errors=self.metrics.fetch_errors,
            )
        except BaseException:
            for tp, start in starts.items():  # what it read is not handed on: read it again
                with contextlib.suppress(IllegalStateError):
                    self.consumer.seek(tp, start)
            raise

    async def _after_fetch_error(
        self, error: Exception, stop: asyncio.Event
    ) -> dict[TopicPartition, list[RawRecord]]:
        """A record the client cannot decode is stepped past (it becomes a dead letter); a
        retriable broker error is waited out; anything else stops the pipeline with the
        error, since retrying it would only repeat it."""
        if is_undecodable(error):
            try:
                read = await self._re_read(stop)
            except (TimeoutError, KafkaError) as lookup:
                if isinstance(lookup, KafkaError) and not lookup.retriable:
                    raise SourceFailed(f"re-reading {self.spec.topics} failed: {lookup!r}") from lookup
                return await self._retry_later("re-reading past an undecodable record", lookup, stop)
            if not any(r.undecodable is not None for records in read.values() for r in records):
                # Not found within the re-read's bounds: the next fetch fails again and this
                # starts over from further on. Said, so that a repeat is not silent.
                log.warning("fetch failed to decode a record (%r); none found on re-reading yet", error)
            for records in read.values():
                for r in records:
                    if r.undecodable is not None:
                        self.metrics.undecodable_records.labels(r.topic).inc()
                        log.error(
                            "record %s[%d]@%d cannot be decoded (%s): dead-lettered, consumption goes on",
                            r.topic,
                            r.partition,
                            r.offset,
                            r.undecodable,
                        )
            return read
        if isinstance(error, KafkaError) and error.retriable:
            return await self._retry_later("fetch", error, stop)
        raise SourceFailed(f"consuming {self.spec.topics} failed: {error!r}") from error

    async def _retry_later(
        self, what: str, error: BaseException, stop: asyncio.Event
    ) -> dict[TopicPartition, list[RawRecord]]:
        """Counted, said every FETCH_ERROR_LOG_EVERY-th time in a row (not a line a second),
        then waited out: the next fetch tries again."""
        self.metrics.fetch_errors.labels(type(error).__name__).inc()
        if self._failed_fetches % FETCH_ERROR_LOG_EVERY == 0:
            log.warning(
                "%s failed (%d in a row), retrying every %.1f s: %r",
                what,
                self._failed_fetches + 1,
                FETCH_RETRY_S,
                error,
            )
        self._failed_fetches += 1
        await _pause(stop)
        return {}

    async def _fetch(self) -> dict[TopicPartition, list[RawRecord]]:
        """Assignment from each unpaused topic in turn, an equal share of ``max_poll_records`` each.
        aiokafka hands out its buffered fetches in partition order, so a flooded topic's
        buffer would otherwise hold another topic's records back until all of it is taken
        (a live lane waiting behind a backfill's buffered megabytes)."""
        consumer = self.consumer
        by_topic: dict[str, list[TopicPartition]] = {}
        for tp in consumer.assignment():
            if tp.topic not in self.held and tp not in self.paused_for_restore:
                by_topic.setdefault(tp.topic, []).append(tp)
        if not by_topic and self.held - self.paused_in_consumer:
            await asyncio.sleep(HOLD_CHECK_S)  # held, not paused yet: no poll, buffers kept
            return {}
        if len(by_topic) <= 1:
            # One topic, or none left unpaused (a poll then keeps the group membership).
            # Held partitions are left out by name: getmany would hand out their buffers.
            only = next(iter(by_topic.values()), [])
            return self._as_raw(
                await self._poll(only, timeout_ms=100, max_records=self.spec.max_poll_records)
            )
        share = max(1, self.spec.max_poll_records // len(by_topic))
        topics = sorted(by_topic)
        self._turn = (self._turn + 1) % len(topics)  # who goes first rotates
        fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for topic in topics[self._turn :] + topics[: self._turn]:
            fetched.update(await self._poll(by_topic[topic], timeout_ms=0, max_records=share))
        if not fetched:  # nothing buffered anywhere: wait for the next fetch response
            taking = [tp for topic in topics for tp in by_topic[topic]]
            fetched = await self._poll(taking, timeout_ms=100, max_records=share)
        return self._as_raw(fetched)

    async def _poll(
        self, partitions: list[TopicPartition], timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """getmany on ``partitions`` (none named: every unpaused one), its end noted."""
        try:
            return await self.consumer.getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        finally:
            self.last_poll = time.monotonic()

    def _as_raw(
        self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> dict[TopicPartition, list[RawRecord]]:
        taken = {}
        for tp, messages in fetched.items():
            generation = self.generation_of(tp)
            taken[tp] = [raw(m, generation) for m in messages]
        return taken

    def _apply_backpressure(self) -> None:
        """Hold the topics at their high watermark (``_fetch`` takes nothing of them), pause
        the held ones in the consumer once ``pause_after_s`` passed without a poll (at once
        while another topic flows), and let go of those back at their low watermark."""
        held, consumer = self.held, self.consumer
        room = self.credits.update_held(held)
        if room:
            resumed = room & self.paused_in_consumer
            if resumed:
                consumer.resume(*self._partitions_of(resumed))
            self.paused_in_consumer -= room
        flowing = any(tp.topic not in held for tp in consumer.assignment())
        unpolled_too_long = time.monotonic() - self.last_poll >= self.pause_after_s
        overdue = held - self.paused_in_consumer if flowing or unpolled_too_long else set()
        if overdue:
            consumer.pause(*self._partitions_of(overdue))
            self.paused_in_consumer |= overdue
        self.metrics.paused.set(len(held))

    def _partitions_of(self, topics: set[str]) -> list[TopicPartition]:
        return [
            tp
            for tp in self.consumer.assignment()
            if tp.topic in topics and tp not in self.paused_for_restore
        ]

    def _hold_restoring(self) -> None:
        """Partitions whose state is being restored are paused; restored, resumed (unless
        their topic is paused by backpressure meanwhile)."""
        consumer = self.consumer
        restoring = {
            tp for tp in consumer.assignment() if self.partitions.restoring((tp.topic, tp.partition))
        }
        if new := restoring - self.paused_for_restore:
            consumer.pause(*new)
        if restored := [
            tp for tp in self.paused_for_restore - restoring if tp.topic not in self.paused_in_consumer
        ]:
            consumer.resume(*restored)
        self.paused_for_restore = restoring

    async def _commit_offsets(self, due: dict[PartitionKey, int]) -> None:
        await self.consumer.commit({TopicPartition(t, p): o for (t, p), o in due.items()})

    def partition_readings(self) -> list[PartitionReading]:
        consumer = self.consumer

        def high_of(key: PartitionKey) -> int | None:
            return consumer.highwater(TopicPartition(*key))

        return self.partitions.readings(((tp.topic, tp.partition) for tp in consumer.assignment()), high_of)

    def lag(self) -> int:
        """Records behind the high watermark on every assigned partition, fetched or not."""
        return sum(r.lag or 0 for r in self.partition_readings())

    def resume_if_room(self) -> None:
        """No partition may stay paused while its topic has room for more events."""
        stray = [
            tp
            for tp in self.consumer.paused()
            if tp.topic not in self.held and tp not in self.paused_for_restore
        ]
        if stray:
            log.warning("resuming %d partitions left paused", len(stray))
            self.consumer.resume(*stray)

    async def stop(self) -> None:
        await self.consumer.stop()
