"""RetryBudget (ratio + floor over a sliding window, fake clock) and event deadlines."""

from __future__ import annotations

import pytest

from pipeline.control.budget import RetryBudget, deadline_ms, split_stale
from pipeline.events import UserRequest
from pipeline.testing import ManualClock
from pipeline.testing.builders import event, user_request


def spend_all(budget: RetryBudget, limit: int = 10_000) -> int:
    n = 0
    while n < limit and budget.try_spend():
        n += 1
    return n


# -- RetryBudget ---------------------------------------------------------------------------


def test_floor_alone_allows_min_per_s_times_window():
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10.0, clock=ManualClock())
    assert spend_all(budget) == 10
    assert not budget.try_spend()


def test_ratio_of_recent_requests_on_top_of_the_floor():
    clock = ManualClock()
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10.0, clock=clock)
    for _ in range(100):
        budget.record_request()
    assert spend_all(budget) == 20 + 10
    for _ in range(10):  # more requests: room for 2 more retries
        budget.record_request()
    assert spend_all(budget) == 2


def test_no_floor_means_retries_only_in_proportion():
    budget = RetryBudget(ratio=0.5, min_per_s=0.0, window_s=1.0, clock=ManualClock())
    assert not budget.try_spend()
    for _ in range(8):
        budget.record_request()
    assert spend_all(budget) == 4


def test_entries_older_than_the_window_expire():
    clock = ManualClock()
    budget = RetryBudget(ratio=0.5, min_per_s=0.0, window_s=10.0, clock=clock)
    for _ in range(20):
        budget.record_request()
    assert spend_all(budget) == 10

    clock.s = 10.0  # exactly one window later: still counted, still spent
    assert not budget.try_spend()

    clock.s = 10.5  # requests and retries from t=0 have left the window
    assert not budget.try_spend()  # nothing recent to retry in proportion to
    for _ in range(4):
        budget.record_request()
    assert spend_all(budget) == 2


def test_the_window_slides_rather_than_resetting():
    clock = ManualClock()
    budget = RetryBudget(ratio=1.0, min_per_s=0.0, window_s=10.0, clock=clock)
    for t in range(10):  # one request a second
        clock.s = float(t)
        budget.record_request()
    clock.s = 9.0
    assert spend_all(budget) == 10
    clock.s = 12.5  # requests at 0, 1 and 2 s have expired; the 10 retries (at 9 s) have not
    assert not budget.try_spend()
    clock.s = 19.5  # everything from before 9.5 s has expired, retries included
    assert spend_all(budget) == 0
    budget.record_request()
    assert spend_all(budget) == 1


def test_remembered_requests_stay_bounded_by_the_window_when_nothing_fails():
    """In a healthy run every first attempt calls record_request() and nothing ever calls
    try_spend(): what the budget remembers must still be limited to its window, not grow
    with every request the process has ever sent."""
    clock = ManualClock()
    budget = RetryBudget(ratio=0.2, min_per_s=10.0, window_s=1.0, clock=clock)
    for i in range(50_000):  # 1,000 requests a second for 50 s
        clock.s = i / 1000.0
        budget.record_request()
    # The last second holds 1,001 requests; allow as much again for trimming lazily.
    assert len(budget._requests) <= 2 * 1_001


# -- deadlines -----------------------------------------------------------------------------


def row(user: int, *timestamps: int) -> UserRequest:
    """``user``'s row of events at these Kafka timestamps (ms)."""
    return user_request(*(event(i, ts=ts) for i, ts in enumerate(timestamps)), user=user)


def test_deadline_is_the_newest_event_plus_the_budget():
    assert deadline_ms([row(1, 1_000, 5_000, 3_000)], 2_000) == 7_000
    assert deadline_ms([row(1, 1_000), row(2, 4_000, 2_000)], 500) == 4_500


def test_deadline_uses_the_kafka_timestamp_not_the_event_ts_field():
    late_clock = event(ts=1, timestamp_ms=9_000)  # a client-side ts of 1 ms
    assert deadline_ms([user_request(late_clock)], 100) == 9_100


def test_split_stale_judges_each_row_by_its_newest_event():
    old = row(1, 1_000, 2_000)  # newest 2,000: out of budget at 4,000
    mixed = row(2, 1_000, 3_500)  # an old event, but a fresh one too: worth answering
    fresh = row(3, 3_900)
    fresh_rows, stale_rows = split_stale([old, mixed, fresh], end_to_end_ms=2_000, now_ms=4_500)
    assert fresh_rows == [mixed, fresh]
    assert stale_rows == [old]


@pytest.mark.parametrize(
    ("now_ms", "stale"),
    [(6_999.0, False), (6_999.9, False), (7_000.0, True), (7_001.0, True)],
)
def test_split_stale_boundary_is_the_deadline(now_ms, stale):
    r = row(1, 5_000)
    fresh_rows, stale_rows = split_stale([r], end_to_end_ms=2_000, now_ms=now_ms)
    assert (stale_rows, fresh_rows) == (([r], []) if stale else ([], [r]))
    assert deadline_ms([r], 2_000) == 7_000


def test_split_stale_keeps_order_and_loses_nothing():
    rows = [row(u, 1_000 * u) for u in range(1, 11)]
    fresh_rows, stale_rows = split_stale(rows, end_to_end_ms=1_000, now_ms=6_000)
    assert [r.user_id for r in stale_rows] == [1, 2, 3, 4, 5]
    assert [r.user_id for r in fresh_rows] == [6, 7, 8, 9, 10]
    assert split_stale([], 1_000, 0) == ([], [])
