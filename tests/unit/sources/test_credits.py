"""Credits: a topic is held at its high watermark and let go only once back at its low
watermark; each topic has its own gate."""

from __future__ import annotations

import pytest

from pipeline.sources.credits import CreditGate, TopicCredits


def test_exhausted_exactly_at_high_watermark():
    gate = CreditGate(high_watermark=10, low_watermark=4)
    gate.take(9)
    assert not gate.exhausted
    gate.take(1)
    assert gate.exhausted
    gate.take(5)  # a poll may overshoot
    assert gate.exhausted
    assert gate.in_flight == 15
    gate.give_back(6)
    assert not gate.exhausted


def test_has_room_only_at_or_below_the_low_watermark():
    gate = CreditGate(10, 4)
    gate.take(10)
    seen = []
    for n in (3, 2, 1):  # 7, 5, 4
        gate.give_back(n)
        seen.append((gate.in_flight, gate.has_room))
    assert seen == [(7, False), (5, False), (4, True)]


def test_a_flooded_topic_is_held_alone_and_in_flight_is_the_sum():
    credits = TopicCredits(["live", "backfill"], 10, 4)
    credits.take("backfill", 10)
    credits.take("live", 3)
    held: set[str] = set()
    assert credits.to_hold(held) == {"backfill"}
    assert credits.in_flight == 13
    held |= credits.to_hold(held)
    assert credits.to_hold(held) == set()  # already held


def test_a_topic_not_named_at_start_gets_its_own_gate():
    credits = TopicCredits(["a"], 10, 4)
    credits.take("b", 10)
    assert credits.to_hold(set()) == {"b"}
    assert credits.gate("a").in_flight == 0


def test_a_held_topic_is_let_go_only_back_at_its_low_watermark():
    credits = TopicCredits(["live", "backfill"], 10, 4)
    credits.take("backfill", 10)
    held = credits.to_hold(set())
    seen = []
    for n in (3, 2, 1):  # 7, 5, 4
        seen.append((credits.gate("backfill").in_flight, credits.to_let_go(held)))
        credits.give_back("backfill", n)
        credits.give_back("live", 0)  # another topic's progress does not resume it
    seen.append((credits.gate("backfill").in_flight, credits.to_let_go(held)))
    assert seen == [(10, set()), (7, set()), (5, set()), (4, {"backfill"})]


def test_giving_back_more_than_taken_raises():
    gate = CreditGate(10, 4)
    gate.take(3)
    gate.give_back(2)
    with pytest.raises(RuntimeError, match="more credits given back than taken"):
        gate.give_back(2)


def test_giving_back_on_a_fresh_gate_raises():
    with pytest.raises(RuntimeError):
        CreditGate(2, 0).give_back(1)


@pytest.mark.parametrize(("high", "low"), [(10, 10), (10, 11), (0, 0), (5, -1)])
def test_watermarks_must_be_ordered(high, low):
    with pytest.raises(ValueError, match="low_watermark"):
        CreditGate(high, low)


def test_smallest_valid_gate():
    gate = CreditGate(1, 0)
    gate.take(1)
    assert gate.exhausted
    gate.give_back(1)
    assert not gate.exhausted
    assert gate.in_flight == 0


def test_update_held_adds_the_full_and_lets_go_of_those_back_at_their_low_watermark():
    credits = TopicCredits(["live", "backfill"], 10, 4)
    held: set[str] = set()
    credits.take("backfill", 10)
    assert credits.update_held(held) == set() and held == {"backfill"}
    credits.give_back("backfill", 6)
    assert credits.update_held(held) == {"backfill"} and held == set()
