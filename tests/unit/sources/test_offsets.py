"""Offset tracking with out-of-order completion: commit the lowest unfinished offset."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from pipeline.sources.offsets import OffsetTracker, PartitionOffsets
from pipeline.sources.partitions import offsets_by_assignment
from pipeline.testing.builders import raw_record


def tracked(*offsets: int) -> PartitionOffsets:
    part = PartitionOffsets()
    for offset in offsets:
        part.track(offset)
    return part


def test_fresh_partition_has_nothing_to_commit():
    part = PartitionOffsets()
    assert part.commit_due() is None
    assert part.pending == 0


def test_in_order_completion_advances_to_one_past_the_last_finished():
    part = tracked(0, 1, 2, 3, 4)
    part.finish(0)
    part.finish(1)
    assert part.commit_due() == 2
    assert part.pending == 3
    for offset in (2, 3, 4):
        part.finish(offset)
    assert part.commit_due() == 5
    assert part.pending == 0
    assert part.next_commit == 5


def test_out_of_order_completion_waits_for_the_lowest_unfinished():
    part = tracked(10, 11, 12, 13, 14)
    part.finish(12)
    part.finish(14)
    assert part.commit_due() == 10
    assert part.pending == 5
    part.finish(10)
    assert part.commit_due() == 11
    part.finish(11)
    assert part.commit_due() == 13  # 12 was already finished
    assert part.pending == 2
    part.finish(13)
    assert part.commit_due() == 15
    assert part.pending == 0


def test_gaps_in_offsets_commit_stops_at_the_lowest_unfinished():
    part = tracked(0, 5, 9, 20)  # e.g. a compacted topic or transaction markers
    part.finish(5)
    part.finish(20)
    assert part.commit_due() == 0
    part.finish(0)
    assert part.commit_due() == 9  # not 6: offset 9 is consumed and unfinished
    part.finish(9)
    assert part.commit_due() == 21


def test_duplicate_finish_is_ignored():
    part = tracked(0, 1, 2)
    part.finish(1)
    part.finish(1)
    assert part.commit_due() == 0
    assert part.pending == 3
    part.finish(0)
    assert part.commit_due() == 2
    assert part.pending == 1
    part.finish(0)  # after it was already committed past
    part.finish(1)
    assert part.commit_due() == 2
    assert part.pending == 1
    part.finish(2)
    assert part.commit_due() == 3


def test_finish_of_an_offset_before_the_oldest_open_or_on_an_empty_partition_is_ignored():
    part = PartitionOffsets()
    part.finish(3)
    assert part.commit_due() is None
    part = tracked(10, 11)
    part.finish(4)  # from before a reset
    assert part.commit_due() == 10
    assert part.pending == 2


def test_commit_due_returns_none_when_nothing_advanced_since_mark():
    part = tracked(0, 1, 2)
    part.finish(0)
    target = part.commit_due()
    assert target == 1
    part.committed = target
    assert part.commit_due() is None
    part.finish(2)  # out of order: the lowest unfinished is still 1
    assert part.commit_due() is None
    part.finish(1)
    assert part.commit_due() == 3
    part.committed = 3
    assert part.commit_due() is None


def test_track_rejects_non_increasing_offsets():
    part = tracked(5, 6)
    with pytest.raises(ValueError, match="out of order"):
        part.track(6)
    with pytest.raises(ValueError, match="out of order"):
        part.track(2)
    assert part.pending == 2


def test_tracker_commits_only_partitions_that_advanced_and_mark_committed():
    tracker = OffsetTracker()
    tracker.track("t", 0, [0, 1, 2])
    tracker.track("t", 1, [100, 101])
    tracker.track("u", 0, [7])
    tracker.finish("t", 0, 0)
    tracker.finish("t", 1, 101)  # out of order: partition 1 stays at 100
    due = tracker.commits_due()
    assert due == {("t", 0): 1, ("t", 1): 100, ("u", 0): 7}
    tracker.mark_committed(due)
    assert tracker.commits_due() == {}
    tracker.finish("t", 1, 100)
    assert tracker.commits_due() == {("t", 1): 102}
    tracker.mark_committed({("t", 1): 102, ("gone", 9): 5})  # unknown keys are ignored
    assert tracker.commits_due() == {}
    assert ("gone", 9) not in tracker.partitions


def test_tracker_pending_counts():
    tracker = OffsetTracker()
    tracker.track("t", 0, range(10))
    tracker.track("t", 1, range(3))
    tracker.finish("t", 0, 0)
    tracker.finish("t", 0, 1)
    tracker.finish("t", 0, 5)  # out of order: still pending until 2..4 finish
    assert tracker.pending() == 8 + 3
    assert tracker.pending([("t", 0)]) == 8
    assert tracker.pending([("t", 1)]) == 3
    assert tracker.pending([("t", 7)]) == 0
    assert tracker.pending([]) == 0


def test_tracker_release_forgets_revoked_partitions():
    tracker = OffsetTracker()
    tracker.track("t", 0, [0, 1])
    tracker.track("t", 1, [0, 1])
    tracker.release([("t", 0), ("t", 9)])
    assert set(tracker.partitions) == {("t", 1)}
    tracker.finish("t", 0, 0)  # a late ack for a revoked partition: ignored, no error
    assert ("t", 0) not in tracker.partitions
    assert tracker.commits_due() == {("t", 1): 0}
    assert tracker.pending() == 2
    # Reassigned later: tracked afresh, even from a lower offset.
    tracker.track("t", 0, [0])
    tracker.finish("t", 0, 0)
    assert tracker.commits_due()[("t", 0)] == 1


def test_tracker_finish_on_unknown_partition_is_ignored():
    tracker = OffsetTracker()
    tracker.finish("t", 3, 10)
    assert tracker.partitions == {}
    assert tracker.commits_due() == {}


def test_many_offsets_in_shuffled_completion_commit_all():
    import random

    rng = random.Random(7)
    part = tracked(*range(1_000))
    order = list(range(1_000))
    rng.shuffle(order)
    committed = []
    lowest_unfinished = 0
    finished = set()
    for offset in order:
        part.finish(offset)
        finished.add(offset)
        while lowest_unfinished in finished:
            lowest_unfinished += 1
        due = part.commit_due()
        if due is not None:
            committed.append(due)
            part.committed = due
        assert (part.committed or 0) == lowest_unfinished
    assert committed == sorted(committed)
    assert part.committed == 1_000
    assert part.pending == 0


def test_age_of_the_oldest_unfinished_offset() -> None:
    tracker = OffsetTracker()
    tracker.track("t", 0, [0, 1, 2], now=100.0)
    tracker.track("t", 0, [3, 4], now=110.0)
    part = tracker.partitions[("t", 0)]
    assert part.oldest_open_age(now=115.0) == 15.0
    for offset in (0, 1, 2):
        tracker.finish("t", 0, offset)
    assert part.oldest_open_age(now=115.0) == 5.0  # the head is now a record of the second fetch
    tracker.finish("t", 0, 4)
    assert part.oldest_open_age(now=120.0) == 10.0  # 3 still open: a pinned head keeps ageing
    tracker.finish("t", 0, 3)
    assert part.oldest_open_age(now=120.0) == 0.0


def test_a_pinned_head_keeps_memory_flat() -> None:
    """One record unfinished at the head, 100,000 finished behind it: what is kept is one
    range and one unfinished offset, not 100,000 entries."""
    part = PartitionOffsets()
    for offset in range(100_001):
        part.track(offset)
    for offset in range(1, 100_001):
        part.finish(offset)
    assert len(part._ranges) == 1 and part._unfinished == {0}
    assert part.commit_due() == 0 and part.pending == 100_001
    part.finish(0)
    assert part.commit_due() == 100_001 and part.pending == 0


def test_an_offset_never_taken_here_does_not_count_as_finished() -> None:
    """An acknowledgement from an earlier assignment, for an offset this one has not taken
    yet, must not mark it finished in advance."""
    part = PartitionOffsets()
    part.track(10)
    part.finish(12)  # not taken (yet) in this assignment
    part.track(11)
    part.track(12)
    part.finish(10)
    part.finish(11)
    assert part.commit_due() == 12  # 12 is still open: its own answer has not come


def test_finishing_a_batch_at_once_ends_where_finishing_each_does() -> None:
    rng = random.Random(5)
    for _ in range(50):
        one, many = PartitionOffsets(), PartitionOffsets()
        offsets = sorted(rng.sample(range(400), 120))  # gaps, as a compacted topic has
        for part in (one, many):
            for offset in offsets:
                part.track(offset)
        done = offsets[:]
        rng.shuffle(done)
        for start in range(0, len(done), 17):  # batches, with duplicates and never-taken ones
            chunk = done[start : start + 17] + done[start : start + 2] + [rng.randrange(400, 500)]
            for offset in chunk:
                one.finish(offset)
            many.finish_many(chunk)
            assert (many.commit_due(), many.pending) == (one.commit_due(), one.pending)
        assert many.commit_due() == offsets[-1] + 1


def test_tracking_a_fetch_at_once_ends_where_tracking_each_does() -> None:
    rng = random.Random(9)
    for _ in range(50):
        one, many = PartitionOffsets(), PartitionOffsets()
        start = 0
        for _ in range(6):  # fetches: runs without gaps, and some with (compaction)
            run = list(range(start, start + rng.randrange(1, 40)))
            if rng.random() < 0.4:
                run = sorted(rng.sample(run, max(1, len(run) // 2)))
            for offset in run:
                one.track(offset)
            many.track_many(run)
            start = run[-1] + 1 + rng.randrange(0, 3)
            assert (many.pending, many.commit_due()) == (one.pending, one.commit_due())
        tracked_offsets = sorted(one._unfinished)
        assert many._unfinished == one._unfinished
        for offset in tracked_offsets:
            one.finish(offset)
            many.finish(offset)
        assert many.commit_due() == one.commit_due() == tracked_offsets[-1] + 1


@pytest.mark.parametrize("fetch", [[5, 6, 7], [3, 5, 4], [4, 6, 5, 7], [8, 10, 9], [8, 9, 9], [8, 9, 10, 9]])
def test_a_fetch_tracked_at_once_is_still_refused_out_of_order(fetch: list[int]) -> None:
    part = tracked(5, 6, 7)
    with pytest.raises(ValueError, match="out of order"):
        part.track_many(fetch)


def test_a_batchs_inputs_are_grouped_by_partition_and_assignment() -> None:
    sources = [
        raw_record(5, partition=0, generation=1),
        raw_record(9, partition=1, generation=1),
        raw_record(6, partition=0, generation=1),
        raw_record(6, partition=0, generation=2),  # re-read after a rebalance: its own take
        raw_record(3, topic="other", partition=0, generation=1),
    ]
    assert offsets_by_assignment(sources) == {
        ("interactions", 0, 1): [5, 6],
        ("interactions", 1, 1): [9],
        ("interactions", 0, 2): [6],
        ("other", 0, 1): [3],
    }
    assert offsets_by_assignment([]) == {}


def test_a_pinned_head_keeps_the_fetch_times_flat_through_the_tracker() -> None:
    """The source's path (``OffsetTracker.track``, one fetch time each): 50,000 fetches of one
    record, each finished, behind one record that never finishes. What is kept of their times
    stays a handful of entries and a few kB, and the age reported is still the head's."""
    tracker = OffsetTracker()
    tracker.track("t", 0, [0], now=0.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for offset in range(1, 50_001):
            tracker.track("t", 0, [offset], now=float(offset))
            tracker.finish_many("t", 0, [offset])
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    part = tracker.partitions[("t", 0)]
    assert len(part._ranges) == 1 and part._unfinished == {0}
    assert len(part._taken) <= 256
    assert grown < 64_000  # 50,000 entries took about 6 MB
    assert part.oldest_open_age(now=60_000.0) == 60_000.0
    tracker.finish("t", 0, 0)
    assert part.oldest_open_age(now=60_000.0) == 0.0 and part.commit_due() == 50_001


def test_the_age_stays_right_when_fetch_times_are_merged_behind_a_pinned_head() -> None:
    """Fetches whose records all finished are forgotten; one still open keeps its own time,
    and becomes the age once the head passes to it."""
    tracker = OffsetTracker()
    tracker.track("t", 0, [0, 1], now=0.0)
    open_in_the_middle = {7_000, 7_001, 30_002}
    for offset in range(2, 40_000, 2):  # fetches of two records, taken at t = offset
        tracker.track("t", 0, [offset, offset + 1], now=float(offset))
        tracker.finish_many("t", 0, [o for o in (offset, offset + 1) if o not in open_in_the_middle])
    part = tracker.partitions[("t", 0)]
    assert len(part._taken) <= 256
    assert part.oldest_open_age(now=50_000.0) == 50_000.0
    tracker.finish_many("t", 0, [0, 1])
    assert part.commit_due() == 7_000
    assert part.oldest_open_age(now=50_000.0) == 50_000.0 - 7_000
    tracker.finish("t", 0, 7_000)
    assert part.oldest_open_age(now=50_000.0) == 50_000.0 - 7_000  # 7,001: the same fetch
    tracker.finish("t", 0, 7_001)
    assert part.commit_due() == 30_002
    assert part.oldest_open_age(now=50_000.0) == 50_000.0 - 30_002
    tracker.finish("t", 0, 30_002)
    assert part.oldest_open_age(now=50_000.0) == 0.0 and part.commit_due() == 40_000


def test_the_age_is_the_oldest_unfinished_offsets_fetch_time_whatever_is_forgotten() -> None:
    """Against a plain model (every offset's fetch time kept): fetches with gaps, finishes in
    any order, the fetch times dropped along the way never change the answer."""
    rng = random.Random(11)
    for _ in range(20):
        tracker = OffsetTracker()
        fetched_at: dict[int, float] = {}
        open_offsets: set[int] = set()
        start = 0
        for step in range(600):
            fetch = [o for o in range(start, start + rng.randrange(1, 5)) if rng.random() < 0.8] or [start]
            tracker.track("t", 0, fetch, now=float(step))
            fetched_at.update(dict.fromkeys(fetch, float(step)))
            open_offsets.update(fetch)
            start = fetch[-1] + 1 + rng.randrange(0, 2)
            part = tracker.partitions[("t", 0)]
            assert len(part._taken) <= 2 * len(open_offsets) + 64
            done = [o for o in open_offsets if rng.random() < (0.02 if o == min(open_offsets) else 0.6)]
            tracker.finish_many("t", 0, done)
            open_offsets.difference_update(done)
            expected = 1_000.0 - fetched_at[min(open_offsets)] if open_offsets else 0.0
            assert part.oldest_open_age(now=1_000.0) == expected
