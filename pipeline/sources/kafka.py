"""The Kafka source: an aiokafka consumer group member that hands lists of records on,
tracks their offsets, takes credits, pauses under backpressure and commits only what is
finished. Auto-commit is off: the offset tracker decides what is safe."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from pipeline.events import RawRecord
from pipeline.metrics import Metrics
from pipeline.offsets import OffsetTracker
from pipeline.sources.credits import TopicCredits
from pipeline.ticks import every
from pipeline.topology.schema import Broker, Source

log = logging.getLogger(__name__)
EMIT_SLICE = 256  # records per synchronous pass through the operator chain


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.source.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.source.revoking.clear()
        # New assignments start unpaused; re-apply backpressure to full topics.
        self.source.credits.paused.clear()
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


class KafkaSource:
    def __init__(
        self, spec: Source, broker: Broker, tracker: OffsetTracker, credits: TopicCredits, metrics: Metrics
    ) -> None:
        self.spec = spec
        self.tracker = tracker
        self.credits = credits
        self.metrics = metrics
        self.revoking: set[tuple[str, int]] = set()
        self._waiting_for_credits = False
        self.positions: dict[tuple[str, int], int] = {}  # next offset to take, per partition
        self._turn = 0
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap_servers,
            client_id=broker.client_id,
            group_id=spec.group_id,
            enable_auto_commit=False,
            auto_offset_reset=spec.auto_offset_reset,
            max_poll_records=spec.max_poll_records,
            fetch_max_wait_ms=spec.fetch_max_wait_ms,
        )

    async def start(self) -> None:
        self.consumer.subscribe(self.spec.topics, listener=_Rebalance(self))
        await self.consumer.start()

    async def run(self, emit: Callable[[list[RawRecord]], None], stop: asyncio.Event) -> None:
        consumer = self.consumer
        while not stop.is_set():
            self._apply_backpressure()
            assigned_topics = {tp.topic for tp in consumer.assignment()}
            if assigned_topics and assigned_topics <= self.credits.paused:
                await self._wait_for_credits(stop)  # every topic is full: nothing to fetch
                continue
            fetched = await self._fetch()
            records: list[RawRecord] = []
            for tp, messages in fetched.items():
                if (tp.topic, tp.partition) in self.revoking or not messages:
                    continue  # being handed to another member: it re-reads from our commit
                self.tracker.track(tp.topic, tp.partition, (m.offset for m in messages))
                self.positions[(tp.topic, tp.partition)] = messages[-1].offset + 1
                self.metrics.events_consumed.labels(tp.topic).inc(len(messages))
                self.credits.take(tp.topic, len(messages))
                records.extend(
                    RawRecord(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, tuple(m.headers))
                    for m in messages
                )
            if records:
                self.metrics.in_flight_events.set(self.credits.in_flight)
                # The RxPY chain runs synchronously per emit: hand a large fetch on in slices,
                # yielding between them so completions (and their latency readings) are not
                # held up behind a long burst.
                for start in range(0, len(records), EMIT_SLICE):
                    emit(records[start : start + EMIT_SLICE])
                    if start + EMIT_SLICE < len(records):
                        await asyncio.sleep(0)

    async def _fetch(self) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Take from each unpaused topic in turn, an equal share of ``max_poll_records`` each.
        aiokafka hands out its buffered fetches in partition order, so a flooded topic's
        buffer would otherwise hold another topic's records back until all of it is taken
        (a live lane waiting behind a backfill's buffered megabytes)."""
        consumer = self.consumer
        by_topic: dict[str, list[TopicPartition]] = {}
        for tp in consumer.assignment():
            if tp.topic not in self.credits.paused:
                by_topic.setdefault(tp.topic, []).append(tp)
        if len(by_topic) <= 1:
            return await consumer.getmany(timeout_ms=100, max_records=self.spec.max_poll_records)
        share = max(1, self.spec.max_poll_records // len(by_topic))
        topics = sorted(by_topic)
        self._turn = (self._turn + 1) % len(topics)  # who goes first rotates
        fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for topic in topics[self._turn :] + topics[: self._turn]:
            fetched.update(await consumer.getmany(*by_topic[topic], timeout_ms=0, max_records=share))
        if not fetched:  # nothing buffered anywhere: wait for the next fetch response
            fetched = await consumer.getmany(timeout_ms=100, max_records=share)
        return fetched

    def _apply_backpressure(self) -> None:
        """Pause the partitions of topics at their high watermark, resume those at their
        low watermark."""
        credits, consumer = self.credits, self.consumer
        full, room = credits.to_pause(), credits.to_resume()
        if full:
            consumer.pause(*(tp for tp in consumer.assignment() if tp.topic in full))
            credits.paused |= full
        if room:
            consumer.resume(*(tp for tp in consumer.assignment() if tp.topic in room))
            credits.paused -= room
        self.metrics.paused.set(len(credits.paused))

    async def _wait_for_credits(self, stop: asyncio.Event) -> None:
        self._waiting_for_credits = True
        room = asyncio.ensure_future(self.credits.wait_for_room())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({room, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            room.cancel()
            stopped.cancel()
            self._waiting_for_credits = False

    async def commit(self) -> None:
        due = self.tracker.commits_due()
        if not due:
            return
        await self.consumer.commit({TopicPartition(t, p): o for (t, p), o in due.items()})
        self.tracker.mark_committed(due)
        self.metrics.committed.inc()

    async def commit_loop(self, stop: asyncio.Event) -> None:
        async for _ in every(self.spec.commit_interval_ms / 1000.0, stop):
            try:
                await self.commit()
            except Exception as exc:  # a failed commit is retried at the next tick
                log.warning("offset commit failed, will retry: %r", exc)

    async def release(self, revoked: list[TopicPartition]) -> None:
        """Stop taking from revoked partitions, drain their in-flight events within the
        bound, commit what finished, then let them go."""
        keys = {(tp.topic, tp.partition) for tp in revoked}
        if not keys:
            return
        self.revoking |= keys
        deadline = time.monotonic() + self.spec.drain_timeout_ms / 1000.0
        while self.tracker.pending(keys) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        left = self.tracker.pending(keys)
        try:
            await self.commit()
        except Exception as exc:
            log.warning("commit on revocation failed: %r", exc)
        self.tracker.release(keys)
        for key in keys:
            self.positions.pop(key, None)
        log.info("released %d partitions (%d events still in flight)", len(keys), left)

    def lag(self) -> int:
        """Records behind the high watermark on the assigned partitions (as last fetched)."""
        total = 0
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            position = self.positions.get((tp.topic, tp.partition))
            if high is not None and position is not None:
                total += max(0, high - position)
        return total

    def resume_if_room(self) -> None:
        """No partition may stay paused while its topic has room for more events (after a
        rebalance, say)."""
        stray = [tp for tp in self.consumer.paused() if tp.topic not in self.credits.paused]
        if stray and not self._waiting_for_credits:
            log.warning("resuming %d partitions left paused", len(stray))
            self.consumer.resume(*stray)

    async def stop(self) -> None:
        await self.consumer.stop()
