"""The partitions' owner: take, finish, commit and release of each partition, and the
revocation rule (work of a revoked generation is neither written nor committed)."""

from __future__ import annotations

import asyncio
import time

from pipeline.events import OutputRecord, SinkBatch
from pipeline.metrics import Metrics
from pipeline.sources.credits import TopicCredits, records_bytes
from pipeline.sources.partitions import Partitions
from pipeline.testing.builders import raw_record

KEY = ("t", 0)


def owner(drain_timeout_s: float = 1.0) -> tuple[Partitions, list[dict[tuple[str, int], int]]]:
    commits: list[dict[tuple[str, int], int]] = []

    async def commit(due: dict[tuple[str, int], int]) -> None:
        commits.append(dict(due))

    partitions = Partitions(TopicCredits(["t"], 100, 50), Metrics(), drain_timeout_s)
    partitions.commit_with(commit)
    return partitions, commits


def batch_answering(*records) -> SinkBatch:
    return SinkBatch(tuple(OutputRecord("out", None, b"{}", (), (r,)) for r in records))


async def test_records_of_a_revoked_assignment_are_stale() -> None:
    partitions, _ = owner()
    partitions.assign([KEY])
    first = raw_record(5, topic="t", generation=partitions.generation_of(KEY))
    assert partitions.is_current(first)
    await partitions.release({KEY})  # nothing in flight: released at once
    assert not partitions.is_current(first)
    partitions.assign([KEY])  # assigned again: the old record stays stale
    assert not partitions.is_current(first)


async def test_finish_makes_offsets_committable_in_order_and_gives_credits_back() -> None:
    partitions, commits = owner()
    partitions.assign([KEY])
    gen = partitions.generation_of(KEY)
    records = [raw_record(o, topic="t", generation=gen) for o in range(4)]
    partitions.take(KEY, [0, 1, 2, 3], high=10, nbytes=records_bytes(records))
    assert partitions.in_flight == 4
    assert partitions.credits.in_flight_bytes == records_bytes(records) > 0
    later = batch_answering(records[2], records[3])
    assert partitions.finish(partitions.inputs_of(later)) == 2
    await partitions.commit()
    assert commits == [{KEY: 0}]  # 0 and 1 are open: not past them
    partitions.finish(partitions.inputs_of(batch_answering(records[0], records[1])))
    await partitions.commit()
    assert commits[-1] == {KEY: 4} and partitions.in_flight == 0 and partitions.finished == 4
    assert partitions.credits.in_flight_bytes == 0
    assert partitions.metrics.in_flight_bytes._value.get() == 0
    await partitions.commit()
    assert len(commits) == 2  # nothing new: no request


async def test_work_revoked_during_its_write_gives_credits_back_but_is_not_committed() -> None:
    partitions, commits = owner(drain_timeout_s=0.05)
    partitions.assign([KEY])
    stale = raw_record(0, topic="t", generation=partitions.generation_of(KEY))
    partitions.take(KEY, [0], high=1, nbytes=records_bytes([stale]))
    inputs = partitions.inputs_of(batch_answering(stale))
    await partitions.release({KEY})  # the drain times out with offset 0 still open
    partitions.assign([KEY])
    assert partitions.finish(inputs) == 1
    assert partitions.in_flight == 0 and partitions.credits.in_flight_bytes == 0  # the credit is back
    await partitions.commit()
    assert all(c[KEY] == 0 for c in commits)  # the next owner redoes it from the commit


async def test_without_revoked_keeps_current_outputs_and_drops_stale_ones() -> None:
    partitions, _ = owner()
    partitions.assign([KEY, ("t", 1)])
    current = raw_record(0, topic="t", partition=1, generation=partitions.generation_of(("t", 1)))
    stale = raw_record(0, topic="t", generation=partitions.generation_of(KEY))
    whole = batch_answering(current)
    assert partitions.without_revoked(whole, partitions.inputs_of(whole)) is whole
    await partitions.release({KEY})
    partitions.assign([KEY])
    mixed = batch_answering(current, stale)
    kept = partitions.without_revoked(mixed, partitions.inputs_of(mixed))
    assert [rec.sources for rec in kept.records] == [(current,)]
    assert partitions.metrics.revoked_outputs_dropped._value.get() == 1


async def test_release_waits_for_in_flight_work_within_its_bound_then_commits() -> None:
    partitions, commits = owner(drain_timeout_s=2.0)
    partitions.assign([KEY])
    record = raw_record(0, topic="t", generation=partitions.generation_of(KEY))
    partitions.take(KEY, [0], high=1, nbytes=records_bytes([record]))

    async def finish_soon() -> None:
        await asyncio.sleep(0.1)
        partitions.finish(partitions.inputs_of(batch_answering(record)))

    started = time.monotonic()
    await asyncio.gather(partitions.release({KEY}), finish_soon())
    assert 0.05 < time.monotonic() - started < 1.0  # waited for the work, not the whole bound
    assert commits == [{KEY: 1}]
    assert KEY not in partitions.positions and KEY not in partitions.generations


async def test_release_gives_up_at_its_bound_with_work_still_open() -> None:
    partitions, commits = owner(drain_timeout_s=0.1)
    partitions.assign([KEY])
    partitions.take(KEY, [0, 1], high=2)
    started = time.monotonic()
    await partitions.release({KEY})
    assert 0.09 < time.monotonic() - started < 1.0
    assert all(c[KEY] == 0 for c in commits)  # not committed past the open work
    assert partitions.tracker.pending() == 0  # forgotten


def test_readings_give_lag_from_the_position_up_to_the_highest_watermark_seen() -> None:
    partitions, _ = owner()
    partitions.assign([KEY, ("t", 1)])
    partitions.take(KEY, [0, 1, 2], high=10)
    [taken, untouched] = partitions.readings([KEY, ("t", 1)], lambda key: None)
    assert (taken.partition, taken.lag, taken.committed) == (0, 7, None)
    assert untouched.lag is None  # no position and no commit yet: unknown, not 0
