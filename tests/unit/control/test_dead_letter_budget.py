"""Dead-letter budget: trips on one model-side reason above its share, holds, doubles."""

from __future__ import annotations

from pipeline.control.dead_letter_budget import DeadLetterBudget
from pipeline.testing import ManualClock


def budget(clock: ManualClock) -> DeadLetterBudget:
    return DeadLetterBudget(max_share=0.5, window_s=30, min_events=100, hold_s=10, max_hold_s=40, clock=clock)


def test_a_low_rate_of_bad_rows_never_trips() -> None:
    clock = ManualClock(1000.0)
    b = budget(clock)
    for _ in range(100):
        clock.s += 0.5
        assert b.observe(100, ["invalid_argument"]) is None  # 1 %
    assert not b.holding and b.trips == 0


def test_most_events_dead_for_one_model_reason_trips_and_holds() -> None:
    clock = ManualClock(1000.0)
    b = budget(clock)
    assert b.observe(60, ["model_error"] * 50) is None  # below min_events
    trip = b.observe(60, ["model_error"] * 50)
    assert trip is not None and trip.reason == "model_error" and trip.events == 120
    assert abs(trip.share - 100 / 120) < 1e-9 and trip.hold_s == 10
    assert b.holding
    clock.s += 10.5
    assert not b.holding


def test_input_reasons_and_deadlines_do_not_count() -> None:
    clock = ManualClock(1000.0)
    b = budget(clock)
    assert b.observe(200, ["malformed_json"] * 150 + ["deadline_exceeded"] * 40) is None


def test_trips_in_a_row_hold_longer_up_to_the_maximum() -> None:
    clock = ManualClock(1000.0)
    b = budget(clock)
    holds = []
    for _ in range(4):
        trip = b.observe(200, ["internal_error"] * 200)
        assert trip is not None
        holds.append(trip.hold_s)
        clock.s = b.held_until + 1
    assert holds == [10, 20, 40, 40]
    clock.s += 1000  # long quiet: the next trip starts over
    trip = b.observe(200, ["internal_error"] * 200)
    assert trip is not None and trip.hold_s == 10


def test_old_observations_leave_the_window() -> None:
    clock = ManualClock(1000.0)
    b = budget(clock)
    b.observe(90, ["bad_output"] * 90)
    clock.s += 31
    # In the window still, 90 of 110 would trip; out of it, 20 events are too few to judge.
    assert b.observe(20, []) is None
