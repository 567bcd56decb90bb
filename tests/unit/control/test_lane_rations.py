"""LaneScheduler rations: a lane given a rate dispatches rows at that rate (token bucket),
on a fake clock; other lanes are not held back by it."""

from __future__ import annotations

import pytest

from pipeline.control.lanes import LaneScheduler
from pipeline.testing import ManualClock
from pipeline.testing.builders import distinct_batch, lane_spec


def run(sched: LaneScheduler, clock: ManualClock, lanes: dict[str, int], ms: int) -> dict[str, int]:
    """Keep every lane backlogged with batches of ``lanes[lane]`` rows; every ms dispatch
    what the scheduler allows and complete it at once. Returns rows dispatched per lane."""
    sent = dict.fromkeys(lanes, 0)
    for _ in range(ms):
        for lane, size in lanes.items():
            while len(sched.lanes[lane].queue) < 2:
                sched.push(distinct_batch(lane, users=size))
        while (batch := sched.pop()) is not None:
            sent[batch.lane] += len(batch.requests)
            sched.done(batch.lane)
        clock.ms += 1
    return sent


def test_a_rationed_lane_dispatches_at_its_rate_and_others_are_not_held_back():
    clock = ManualClock()
    sched = LaneScheduler([lane_spec("live"), lane_spec("backfill")], lambda: 8, clock)
    sched.set_rate("backfill", 1000.0)
    sent = run(sched, clock, {"live": 1, "backfill": 10}, ms=2000)
    assert sent["backfill"] == pytest.approx(2000, abs=20)  # 1000 rows/s for 2 s
    assert sent["live"] >= 1900  # a batch every step, as unrationed


def test_lifting_a_ration_lets_the_lane_run_free_again():
    clock = ManualClock()
    sched = LaneScheduler([lane_spec("a")], lambda: 1, clock)
    sched.set_rate("a", 100.0)
    rationed = run(sched, clock, {"a": 10}, ms=1000)["a"]
    sched.set_rate("a", None)
    free = run(sched, clock, {"a": 10}, ms=1000)["a"]
    assert rationed == pytest.approx(100, abs=10)
    assert free == 20_000  # every batch it is given: two per step


def test_retry_in_says_when_a_rationed_lane_has_tokens_again():
    clock = ManualClock()
    sched = LaneScheduler([lane_spec("a")], lambda: 8, clock)
    assert sched.retry_in() is None
    sched.set_rate("a", 100.0)
    sched.push(distinct_batch("a", users=10))
    sched.push(distinct_batch("a", users=10))
    assert sched.pop() is not None  # tokens 0 → -10
    assert sched.pop() is None
    assert sched.retry_in() == pytest.approx(0.1)  # 10 rows at 100 rows/s
    clock.ms += 100
    assert sched.pop() is not None
    assert sched.rates() == {"a": 100.0}
