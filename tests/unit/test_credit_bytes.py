"""The bytes bound beside the credit count, in process on the testing kit's ends: large
records are held in bytes while the sink is stuck, far below the count's bound, and a record
larger than the bound still passes when nothing else is in flight."""

from __future__ import annotations

import asyncio

from pipeline.events import RawRecord
from pipeline.testing import running, topology
from pipeline.testing.builders import input_record

PAD = 100_000  # bytes of padding in each large record's value
HIGH, LOW = 1_000_000, 500_000  # the topic's bytes watermarks: about ten large records
POLL = 4  # records per take: the bound is overshot by at most one


def large(count: int, pad: int = PAD, start: int = 0) -> list[RawRecord]:
    return [
        input_record(partition=i % 2, key=str(i % 10).encode(), user_id=i % 10, item_id=i, pad="x" * pad)
        for i in range(start, start + count)
    ]


def bounded_topology(max_event_bytes: int = 200_000):  # type: ignore[no-untyped-def]
    return topology(
        source={
            "credits": {"high_watermark_bytes": HIGH, "low_watermark_bytes": LOW},  # counts: 20,000/10,000
            "max_poll_records": POLL,
            "max_event_bytes": max_event_bytes,
        }
    )


async def test_large_records_are_bounded_in_bytes_in_flight_while_the_sink_is_stuck() -> None:
    """200 records of 100 kB (20 MB) behind a stuck sink: at most the bytes bound and one
    poll are in flight (the count's bound, 20,000 events, would take them all)."""
    records = large(200)
    biggest = max(len(r.value or b"") + len(r.key or b"") for r in records)
    events: list[int] = []
    gauge: list[float | None] = []
    async with running(bounded_topology()) as run:
        registry = run.runtime.metrics.registry
        run.sink.hold()
        run.source.add(records)
        await run.until(lambda: run.sink.entered > 0)
        for _ in range(30):
            events.append(run.runtime.partitions.in_flight)
            gauge.append(registry.get_sample_value("pipeline_in_flight_bytes"))
            await asyncio.sleep(0.01)
        run.sink.release()
        await run.settled()
        settled = registry.get_sample_value("pipeline_in_flight_bytes")
    bound = HIGH + POLL * biggest
    assert 0 < max(events) * PAD <= bound, max(events)  # bytes in flight, at least
    assert all(g is not None and 0 < g <= bound for g in gauge), gauge
    assert settled == 0  # every byte given back
    assert run.lost() == [] and run.duplicates() == 0 and run.sink.dead_letters() == []


async def test_a_record_larger_than_the_bytes_bound_passes_alone() -> None:
    """A 2 MB record with a 1 MB bound: taken with nothing in flight, it holds its topic
    while the sink is stuck (the records after it wait), and once written all of them pass."""
    t = bounded_topology(max_event_bytes=4_000_000)
    async with running(t) as run:
        run.sink.hold()
        run.source.add(large(1, pad=2_000_000))
        await run.until(lambda: run.sink.entered > 0)
        run.source.add(large(20, pad=100, start=1))
        await asyncio.sleep(0.2)  # forty rounds of the source
        held_in_flight = run.runtime.partitions.in_flight
        run.sink.release()
        await run.settled()
    assert held_in_flight == 1  # the large record alone
    assert run.lost() == [] and run.duplicates() == 0 and run.sink.dead_letters() == []
    assert len(run.sink.recommendations()) >= 1


async def test_every_byte_comes_back_across_a_rebalance_while_the_sink_is_stuck() -> None:
    """The sink held with large records in flight on two partitions, an eager rebalance to
    one of them (the drain times out: partition 1's in-flight work is let go), the sink
    released, then both assigned again: what was in flight before the rebalance and what is
    read again after it each give their bytes back once, and nothing is lost."""
    t = bounded_topology()
    t = t.model_copy(update={"source": t.source.model_copy(update={"drain_timeout_ms": 200})})
    async with running(t) as run:
        registry = run.runtime.metrics.registry
        run.sink.hold()
        run.source.add(large(40))
        await run.until(lambda: run.sink.entered > 0)
        topic = t.source.topics[0]
        await run.source.rebalance({(topic, 0)})
        run.sink.release()
        await run.source.rebalance({(topic, 0), (topic, 1)})
        await run.settled()
        settled = registry.get_sample_value("pipeline_in_flight_bytes")
        in_flight = run.runtime.partitions.in_flight
    assert settled == 0 and in_flight == 0
    assert run.lost() == [] and run.sink.dead_letters() == []
