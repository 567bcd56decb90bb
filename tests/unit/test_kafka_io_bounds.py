"""kafka_io's reads ask the consumer for its position in each partition; aiokafka waits for
one without end when it cannot get it (a broker gone, offsets never answered). Both lookups
are bounded and name the partition. A fake consumer: a position that never comes cannot be
had from a real broker on demand."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from pipeline import kafka_io

TP0, TP3 = TopicPartition("events", 0), TopicPartition("events", 3)


class NoPosition:
    """Knows its position in ``known`` partitions only; waits forever for the others."""

    def __init__(self, known: dict[TopicPartition, int]) -> None:
        self.known = known

    def highwater(self, tp: TopicPartition) -> int:
        return 10

    async def position(self, tp: TopicPartition) -> int:
        if tp not in self.known:
            await asyncio.Event().wait()
        return self.known[tp]


@pytest.fixture(autouse=True)
def short_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_io, "POSITION_TIMEOUT_S", 0.05)


async def test_reading_to_the_end_without_a_position_names_the_partition() -> None:
    consumer = NoPosition({TP0: 0})
    batches = kafka_io.batches_to_end(consumer, [TP0, TP3])  # type: ignore[arg-type]
    with pytest.raises(TimeoutError, match=r"events\[3\]: no read position within"):
        await asyncio.wait_for(anext(batches), 2)


async def test_at_end_without_a_position_names_the_partition() -> None:
    consumer = NoPosition({TP0: 10})
    with pytest.raises(TimeoutError, match=r"events\[3\]: no read position within"):
        await asyncio.wait_for(kafka_io.at_end(consumer, [TP0, TP3]), 2)  # type: ignore[arg-type]
    assert await kafka_io.at_end(consumer, [TP0]) is True  # type: ignore[arg-type]


class OneRecordThenAPause:
    """A partition of two records: the first fetched at once, then one empty fetch, then the
    second. Positions follow the fetches."""

    def __init__(self) -> None:
        self.pos = 0
        self.fetches = 0

    def highwater(self, tp: TopicPartition) -> int:
        return 2

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    async def getmany(self, *tps: TopicPartition, timeout_ms: int) -> dict[TopicPartition, list[object]]:
        self.fetches += 1
        if self.fetches == 2:  # an empty fetch (a leader change, a slow answer)
            return {}
        from aiokafka.structs import ConsumerRecord

        rec = ConsumerRecord("events", 0, self.pos, 0, 0, b"k", b"v", None, 1, 1, ())
        self.pos += 1
        return {TP0: [rec]}


async def test_the_callers_time_with_a_batch_is_not_idleness() -> None:
    """A caller that spends longer than the idle bound on a batch (a paced re-drive) is not
    cut off by the next empty fetch: only the read's own waiting counts."""
    consumer = OneRecordThenAPause()
    batches = kafka_io.batches_to_end(consumer, [TP0], idle_timeout_s=0.1)  # type: ignore[arg-type]
    seen = 0
    async for batch in batches:
        seen += len(batch[TP0])
        await asyncio.sleep(0.2)  # the caller's work, past the idle bound
    assert seen == 2
