"""Stepping past an undecodable record needs one lookup: where the record that raised is
(``consumer.position``). When that lookup fails, the failures are counted as fetch errors,
warned of now and then (not every second), and one that retrying cannot fix stops the
source. A fake consumer: a broker error at exactly that lookup cannot be had from a real
broker on demand."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError, KafkaConnectionError, KafkaError

from pipeline.errors import SourceFailed
from pipeline.events import RawRecord
from pipeline.metrics import Metrics
from pipeline.sources import undecodable
from pipeline.sources.credits import TopicCredits
from pipeline.sources.kafka import KafkaSource
from pipeline.sources.partitions import Partitions
from pipeline.topology.schema import Broker, Source

TP = TopicPartition("t", 0)
BAD = b"<undecodable>"


class Consumer:
    """One partition; a record equal to BAD raises like aiokafka's decoding does, and the
    position lookup that follows fails with ``lookup_errors`` first, one each ("hang": it
    never answers)."""

    def __init__(self, log: list[bytes], lookup_errors: list[KafkaError | str]) -> None:
        self.log = log
        self.pos = 0
        self.lookup_errors = lookup_errors
        self.lookups = 0

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def paused(self) -> set[TopicPartition]:
        return set()

    def pause(self, *tps: TopicPartition) -> None: ...

    def resume(self, *tps: TopicPartition) -> None: ...

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.log)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos = offset

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def position(self, tp: TopicPartition) -> int:
        self.lookups += 1
        if self.lookup_errors:
            error = self.lookup_errors.pop(0)
            if error == "hang":
                await asyncio.sleep(3600)
            assert isinstance(error, KafkaError)
            raise error
        return self.pos

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        taken: list[ConsumerRecord[bytes, bytes]] = []
        while self.pos + len(taken) < len(self.log) and len(taken) < (max_records or 500):
            offset = self.pos + len(taken)
            if self.log[offset] == BAD:
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
            value = self.log[offset]
            taken.append(ConsumerRecord("t", 0, offset, 0, 0, None, value, None, 0, len(value), ()))
        if not taken:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.pos += len(taken)
        return {TP: taken}


def source_on(consumer: Consumer) -> KafkaSource:
    """Call inside a running loop (the real consumer it replaces wants one)."""
    spec = Source(topics=["t"], group_id="g", max_poll_records=10)
    metrics = Metrics()
    partitions = Partitions(TopicCredits(["t"], 1000, 500), metrics, 1.0)
    source = KafkaSource(spec, Broker(), partitions, metrics)
    source.consumer = consumer  # type: ignore[assignment]
    return source


async def run_until(source: KafkaSource, got: list[RawRecord], count: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(got.extend, stop))
    for _ in range(500):
        if len(got) >= count or task.done():
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 3)


async def test_failed_lookups_are_counted_warned_of_now_and_then_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(undecodable, "LOOKUP_RETRY_S", 0.001)
    monkeypatch.setattr(undecodable, "LOOKUP_TIMEOUT_S", 0.05)
    failures = 64
    errors: list[KafkaError | str] = ["hang", *(KafkaConnectionError("down") for _ in range(failures - 1))]
    consumer = Consumer([b"a", BAD, b"c"], errors)
    source = source_on(consumer)
    got: list[RawRecord] = []
    with caplog.at_level(logging.INFO):
        await run_until(source, got, 3)
    assert [(r.offset, r.undecodable is not None) for r in got] == [(0, False), (1, True), (2, False)]
    fetch_errors = source.metrics.fetch_errors
    assert fetch_errors.labels("TimeoutError")._value.get() == 1  # the lookup that never answered
    assert fetch_errors.labels("KafkaConnectionError")._value.get() == failures - 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and "(61 in a row)" in warnings[-1], warnings  # 1st, 31st, 61st
    assert any(f"after {failures} failed attempts" in r.getMessage() for r in caplog.records)


async def test_a_lookup_error_that_retrying_cannot_fix_stops_the_source() -> None:
    consumer = Consumer([b"a", BAD, b"c"], [GroupAuthorizationFailedError()])
    source = source_on(consumer)
    with pytest.raises(SourceFailed, match=r"t\[0\] failed: GroupAuthorizationFailedError"):
        await run_until(source, [], 3)
    assert consumer.lookups == 1
    assert source.metrics.fetch_errors.labels("GroupAuthorizationFailedError")._value.get() == 1


async def test_a_stop_during_failing_lookups_ends_the_step_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(undecodable, "LOOKUP_RETRY_S", 30.0)
    consumer = Consumer([b"a", BAD], [KafkaConnectionError("down")] * 5)
    stop = asyncio.Event()
    step = asyncio.create_task(undecodable.step_past_undecodable(consumer, {TP: 0}, 10, stop))  # type: ignore[arg-type]
    while consumer.lookups == 0:
        await asyncio.sleep(0.01)
    stop.set()
    read = await asyncio.wait_for(step, 1)
    assert [r.offset for r in read[TP]] == [0]  # the bad record is left for the next fetch
