"""KafkaSource against a fake consumer: the loop's decisions without a broker (the real
broker cases are in tests/faults)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from pipeline.errors import SourceFailed
from pipeline.events import RawRecord
from pipeline.metrics import Metrics
from pipeline.sources import kafka as kafka_source
from pipeline.sources.credits import TopicCredits
from pipeline.sources.kafka import KafkaSource, _Rebalance
from pipeline.sources.partitions import Partitions
from pipeline.sources.undecodable import step_past_undecodable
from pipeline.topology.schema import Broker, Source

BAD = b"<undecodable>"


def record(tp: TopicPartition, offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, None, value, None, 0, len(value), ())


@dataclass
class FakeConsumer:
    """Hands records out like aiokafka: paused partitions give nothing, an empty poll waits
    its timeout, and a record it cannot decode raises after it has already moved the other
    partitions' positions past what it drained in that call (which the caller never gets)."""

    logs: dict[TopicPartition, list[bytes]]
    pos: dict[TopicPartition, int] = field(default_factory=dict)
    paused_tps: set[TopicPartition] = field(default_factory=set)
    polls: int = 0

    def __post_init__(self) -> None:
        self.pos = {tp: 0 for tp in self.logs}

    def assignment(self) -> set[TopicPartition]:
        return set(self.logs)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_tps)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_tps |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_tps -= set(tps)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.logs[tp])

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.pos[tp]

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        self.polls += 1
        out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        budget = max_records or 500
        for tp in sorted(tps or self.logs):
            if tp in self.paused_tps:
                continue
            taken: list[ConsumerRecord[bytes, bytes]] = []
            while budget and self.pos[tp] + len(taken) < len(self.logs[tp]):
                offset = self.pos[tp] + len(taken)
                if self.logs[tp][offset] == BAD:
                    raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
                taken.append(record(tp, offset, self.logs[tp][offset]))
                budget -= 1
            if taken:
                self.pos[tp] += len(taken)
                out[tp] = taken
        if not out:
            await asyncio.sleep(timeout_ms / 1000)
        return out


def source_with(
    consumer: FakeConsumer,
    credits: TopicCredits,
    max_poll_records: int = 100,
    pause_after_s: float = kafka_source.PAUSE_AFTER_S,
) -> KafkaSource:
    """Call inside a running loop (the real consumer it replaces wants one)."""
    spec = Source(topics=["t"], group_id="g", max_poll_records=max_poll_records)
    metrics = Metrics()
    source = KafkaSource(spec, Broker(), Partitions(credits, metrics, 1.0), metrics, pause_after_s)
    source.consumer = consumer  # type: ignore[assignment]
    return source


TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


@dataclass
class Running:
    """A source's run loop as a task, and the records it handed on."""

    source: KafkaSource
    got: list[RawRecord] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.task = asyncio.create_task(self.source.run(self.got.extend, self.stop))

    async def until_taken(self, count: int) -> None:
        while len(self.got) < count:
            await asyncio.sleep(0.01)

    async def finish(self, timeout_s: float = 2) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout_s)


async def test_a_full_topic_is_held_with_its_buffer_and_paused_only_when_held_long() -> None:
    """aiokafka drops what it has fetched for a partition when it is paused: a topic at its
    high watermark is first only held (not taken from, not polled, the consumer untouched)
    and is paused in the consumer only once held for pause_after_s, so that the loop can go
    on polling for its group membership."""
    consumer = FakeConsumer({TP0: [b"{}"] * 30})
    credits = TopicCredits(["t"], high_watermark=10, low_watermark=5)
    source = source_with(consumer, credits, max_poll_records=5, pause_after_s=0.3)
    run = Running(source)
    await run.until_taken(10)
    polls_at_full = consumer.polls
    await asyncio.sleep(0.1)
    assert len(run.got) == 10 and not consumer.paused_tps and consumer.polls == polls_at_full
    assert source.metrics.paused._value.get() == 1  # held counts as paused for operators
    credits.give_back("t", 10)  # the work finishes: taken from again, nothing to resume
    await run.until_taken(20)
    await asyncio.sleep(0.5)  # held again, now past pause_after_s
    assert len(run.got) == 20 and TP0 in consumer.paused_tps
    polls_paused = consumer.polls
    await asyncio.sleep(0.3)
    assert consumer.polls > polls_paused  # paused: the loop polls (membership)
    credits.give_back("t", 10)
    await run.until_taken(30)
    await run.finish()
    assert TP0 not in consumer.paused_tps
    assert [r.offset for r in run.got] == list(range(30))


async def test_a_full_topic_is_paused_at_once_while_another_topic_flows() -> None:
    """Beside a flowing (live) topic a full one is paused in the consumer at once: aiokafka
    would hold back the broker's next fetch while a fresh buffer of it waits unconsumed."""
    a0, b0 = TopicPartition("a", 0), TopicPartition("b", 0)
    consumer = FakeConsumer({a0: [b"{}"] * 30, b0: [b"{}"] * 3})
    credits = TopicCredits(["a", "b"], high_watermark=10, low_watermark=5)
    source = source_with(consumer, credits, max_poll_records=10, pause_after_s=60.0)
    run = Running(source)
    for _ in range(100):
        if a0 in consumer.paused_tps:
            break
        await asyncio.sleep(0.01)
    await run.finish()
    assert a0 in consumer.paused_tps and b0 not in consumer.paused_tps
    assert sum(r.topic == "a" for r in run.got) == 10 and sum(r.topic == "b" for r in run.got) == 3


async def test_rebalances_while_held_do_not_put_off_the_pause() -> None:
    """The pause comes pause_after_s after the last poll however often the group rebalances
    meanwhile (each assignment forgets what was held): the member's idle time stays bounded."""
    consumer = FakeConsumer({TP0: [b"{}"] * 30})
    credits = TopicCredits(["t"], high_watermark=10, low_watermark=5)
    source = source_with(consumer, credits, max_poll_records=10, pause_after_s=0.4)
    run = Running(source)
    await run.until_taken(10)
    held_at = asyncio.get_running_loop().time()
    while TP0 not in consumer.paused_tps and asyncio.get_running_loop().time() - held_at < 2:
        await _Rebalance(source).on_partitions_assigned([TP0])  # every 50 ms
        await asyncio.sleep(0.05)
    paused_after = asyncio.get_running_loop().time() - held_at
    await run.finish()
    assert TP0 in consumer.paused_tps and paused_after < 0.8, paused_after
    assert len(run.got) == 10


def test_pause_after_stays_well_inside_max_poll_interval() -> None:
    spec = Source(topics=["t"], group_id="g", max_poll_interval_ms=3000)

    async def build() -> KafkaSource:
        metrics = Metrics()
        return KafkaSource(spec, Broker(), Partitions(TopicCredits(["t"], 10, 5), metrics, 1.0), metrics)

    assert asyncio.run(build()).pause_after_s == 0.75


async def test_a_rebalance_while_paused_does_not_wedge_the_source() -> None:
    consumer = FakeConsumer({TP0: [b"{}"] * 30})
    credits = TopicCredits(["t"], high_watermark=10, low_watermark=5)
    source = source_with(consumer, credits, max_poll_records=5, pause_after_s=0.0)
    run = Running(source)
    await run.until_taken(10)
    await asyncio.sleep(0.3)
    assert TP0 in consumer.paused_tps and len(run.got) == 10  # full: paused
    polls_while_paused = consumer.polls
    # A rebalance hands the partition back unpaused, with the credits still taken.
    consumer.paused_tps.clear()
    await _Rebalance(source).on_partitions_assigned([TP0])
    await asyncio.sleep(0.3)
    paused_again = TP0 in consumer.paused_tps
    credits.give_back("t", len(run.got))  # the work finishes
    for _ in range(100):
        if len(run.got) == 30:
            break
        credits.give_back("t", credits.gate("t").in_flight)
        await asyncio.sleep(0.02)
    await run.finish()
    assert paused_again, "the full topic must be paused again after the assignment"
    assert [r.offset for r in run.got] == list(range(30))
    assert polls_while_paused >= 3  # kept polling while paused (membership), not parked
    assert consumer.polls > polls_while_paused


async def test_an_undecodable_record_is_stepped_past_and_nothing_is_skipped() -> None:
    consumer = FakeConsumer({TP0: [b"a0", b"a1"], TP1: [b"b0", BAD, b"b2"]})
    source = source_with(consumer, TopicCredits(["t"], 1000, 500))
    got: list[RawRecord] = []
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(got.extend, stop))
    for _ in range(200):
        if len(got) >= 5:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 3)
    assert sorted((r.partition, r.offset, r.undecodable is not None) for r in got) == [
        (0, 0, False),
        (0, 1, False),
        (1, 0, False),
        (1, 1, True),
        (1, 2, False),
    ]


class FailingConsumer(FakeConsumer):
    """Raises ``errors`` from its first polls, one each, then hands out its log."""

    def __init__(self, logs: dict[TopicPartition, list[bytes]], errors: list[Exception]) -> None:
        super().__init__(logs)
        self.errors = errors

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None):  # type: ignore[no-untyped-def]
        if self.errors:
            self.polls += 1
            raise self.errors.pop(0)
        return await super().getmany(*tps, timeout_ms=timeout_ms, max_records=max_records)


async def test_a_long_broker_outage_is_retried_counted_and_logged_now_and_then(monkeypatch, caplog) -> None:
    monkeypatch.setattr(kafka_source, "FETCH_RETRY_S", 0.001)
    failures = 65
    outage: list[Exception] = [KafkaConnectionError("broker down") for _ in range(failures)]
    with caplog.at_level(logging.INFO, logger="pipeline.sources.kafka"):
        consumer = FailingConsumer({TP0: [b"{}"] * 5}, outage)
        source = source_with(consumer, TopicCredits(["t"], 1000, 500))
        got: list[RawRecord] = []
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(got.extend, stop))
        for _ in range(300):
            if len(got) == 5:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 3)
    assert [r.offset for r in got] == list(range(5))
    assert source.metrics.fetch_errors.labels("KafkaConnectionError")._value.get() == failures
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and "(61 in a row)" in warnings[-1], warnings  # 1st, 31st, 61st
    assert any(f"after {failures} failed attempts" in r.getMessage() for r in caplog.records)


async def test_a_fetch_error_that_retrying_cannot_fix_stops_the_source() -> None:
    consumer = FailingConsumer({TP0: [b"{}"]}, [TopicAuthorizationFailedError()])
    source = source_with(consumer, TopicCredits(["t"], 1000, 500))
    with pytest.raises(SourceFailed, match="TopicAuthorizationFailedError"):
        await asyncio.wait_for(source.run(lambda _: None, asyncio.Event()), 3)


class LiveConsumer(FakeConsumer):
    """Live traffic: every poll appends a record to partition 0."""

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None):  # type: ignore[no-untyped-def]
        self.logs[TP0].append(b"{}")
        return await super().getmany(*tps, timeout_ms=timeout_ms, max_records=max_records)


async def test_stepping_past_an_undecodable_record_stops_at_each_partitions_end() -> None:
    """Found by the soak: a clean partition under live traffic was re-read record by record
    as new ones arrived, up to 2 x max_poll_records, holding everything for ~40 s."""
    consumer = LiveConsumer({TP0: [b"{}"] * 5, TP1: [b"b0", BAD, b"b2"]})
    read = await step_past_undecodable(consumer, {TP0: 2, TP1: 0}, limit=1_000)  # type: ignore[arg-type]
    assert [r.offset for r in read[TP0]] == [2, 3, 4]  # up to the end seen at the failure
    assert [(r.offset, r.undecodable is not None) for r in read[TP1]] == [(0, False), (1, True)]


class LookupFailingConsumer(FakeConsumer):
    """Its committed-offset lookup (the re-read's start) fails with ``errors``, one a call."""

    def __init__(self, logs: dict[TopicPartition, list[bytes]], errors: list[Exception]) -> None:
        super().__init__(logs)
        self.errors = errors

    async def committed(self, tp: TopicPartition) -> int | None:
        if self.errors:
            raise self.errors.pop(0)
        return None


async def test_a_failing_re_read_is_counted_retried_and_said_now_and_then(monkeypatch, caplog) -> None:
    monkeypatch.setattr(kafka_source, "FETCH_RETRY_S", 0.001)
    failures = 35
    consumer = LookupFailingConsumer(
        {TP0: [b"a0", BAD, b"a2"]}, [KafkaConnectionError("broker away") for _ in range(failures)]
    )
    source = source_with(consumer, TopicCredits(["t"], 1000, 500))
    got: list[RawRecord] = []
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="pipeline.sources.kafka"):
        task = asyncio.create_task(source.run(got.extend, stop))
        for _ in range(300):
            if len(got) == 3:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 3)
    assert [(r.offset, r.undecodable is not None) for r in got] == [(0, False), (1, True), (2, False)]
    assert source.metrics.fetch_errors.labels("KafkaConnectionError")._value.get() == failures
    said = [r.getMessage() for r in caplog.records if "re-reading past an undecodable" in r.getMessage()]
    assert len(said) == 2 and "(31 in a row)" in said[-1], said  # the 1st and the 31st


async def test_a_re_read_error_that_retrying_cannot_fix_stops_the_source() -> None:
    consumer = LookupFailingConsumer({TP0: [BAD]}, [TopicAuthorizationFailedError()])
    source = source_with(consumer, TopicCredits(["t"], 1000, 500))
    with pytest.raises(SourceFailed, match="re-reading"):
        await asyncio.wait_for(source.run(lambda _: None, asyncio.Event()), 3)


class _RestoringState:
    """What the partitions' owner asks of durable state: which partitions are restoring."""

    def __init__(self) -> None:
        self.restoring: set[int] = set()

    def is_restoring(self, partition: int) -> bool:
        return partition in self.restoring

    def assigned(self, partitions: set[int], split: set[int] | None = None) -> None:
        self.restoring |= partitions

    async def released(self, partitions: set[int], bound_s: float) -> None:
        self.restoring -= partitions


async def test_records_fetched_in_the_poll_that_assigns_a_restoring_partition_are_read_again() -> None:
    """aiokafka assigns inside a poll, and that poll can hand out the new partition's records
    before the source could pause it for its restore: they are read again afterwards, not
    skipped."""
    state = _RestoringState()

    class AssigningConsumer(FakeConsumer):
        async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None):  # type: ignore[no-untyped-def]
            if not state.restoring and self.polls == 0:
                source.partitions.assign([("t", 0)])  # the rebalance, inside the poll
            return await super().getmany(*tps, timeout_ms=timeout_ms, max_records=max_records)

    consumer = AssigningConsumer({TP0: [b"{}"] * 20})
    source = source_with(consumer, TopicCredits(["t"], high_watermark=100, low_watermark=50))
    source.partitions.state = state  # type: ignore[assignment]
    run = Running(source)
    await asyncio.sleep(0.3)
    assert run.got == [] and TP0 in consumer.paused_tps  # held while restoring
    state.restoring.clear()  # restored
    await asyncio.wait_for(run.until_taken(20), 5)
    await run.finish()
    assert [r.offset for r in run.got] == list(range(20))


async def test_a_topic_of_large_records_is_held_at_its_bytes_bound() -> None:
    """Each record's key, value and headers count towards its topic's bytes in flight: the
    topic is held at its bytes bound long before its count, and taken from again once the
    finished records bring it down to the low one."""
    consumer = FakeConsumer({TP0: [b"x" * 1_000] * 20})
    credits = TopicCredits(["t"], 100, 50, high_watermark_bytes=3_000, low_watermark_bytes=1_000)
    source = source_with(consumer, credits, max_poll_records=2)
    run = Running(source)
    await run.until_taken(4)  # 2,000 bytes: one more poll, then 4,000: held
    await asyncio.sleep(0.1)
    assert len(run.got) == 4 and credits.in_flight_bytes == 4_000
    assert source.metrics.in_flight_bytes._value.get() == 4_000
    credits.give_back("t", 2, 2_000)  # 2,000 in flight: above the low watermark
    await asyncio.sleep(0.1)
    assert len(run.got) == 4
    credits.give_back("t", 1, 1_000)
    await run.until_taken(6)
    await run.finish()
