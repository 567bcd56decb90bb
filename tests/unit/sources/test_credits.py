"""Credits: a topic is held at its high watermark and let go only once back at its low
watermark; each topic has its own gate."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline import wiring
from pipeline.sources.credits import CreditGate, TopicCredits, bytes_by_topic, record_bytes, records_bytes
from pipeline.testing import topology
from pipeline.testing.builders import raw_record
from pipeline.topology.schema import Credits


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


# -- the bytes bound beside the count ----------------------------------------------------


def test_a_record_counts_its_key_value_and_headers() -> None:
    record = raw_record(key=b"12", value=b"x" * 100, headers=(("trace", b"abc"), ("empty", b"")))
    assert record_bytes(record) == 2 + 100 + len("trace") + 3 + len("empty")
    assert record_bytes(raw_record(key=None, value=None)) == 0
    assert records_bytes([record, raw_record(value=b"1234")]) == record_bytes(record) + 4
    sizes = bytes_by_topic([raw_record(topic="a", value=b"12"), raw_record(topic="b", value=b"3")] * 2)
    assert sizes == {"a": 4, "b": 2}


def test_the_bytes_bound_holds_a_topic_far_below_its_count() -> None:
    gate = CreditGate(100, 50, high_watermark_bytes=1_000, low_watermark_bytes=400)
    gate.take(1, 600)
    assert not gate.exhausted
    gate.take(1, 400)
    assert gate.exhausted and gate.in_flight == 2  # two events, at the bytes bound
    credits = TopicCredits(["big", "small"], 100, 50, high_watermark_bytes=1_000, low_watermark_bytes=400)
    credits.take("big", 2, 1_000)
    credits.take("small", 2, 20)
    assert credits.to_hold(set()) == {"big"}  # only the topic of the large records
    assert credits.in_flight_bytes == 1_020


def test_a_topic_is_let_go_only_below_both_low_watermarks() -> None:
    credits = TopicCredits(["t"], 10, 4, high_watermark_bytes=1_000, low_watermark_bytes=400)
    held: set[str] = set()
    credits.take("t", 2, 1_000)
    assert credits.update_held(held) == set() and held == {"t"}
    credits.give_back("t", 1, 500)  # 1 event, 500 bytes: the count is low, the bytes not
    assert credits.update_held(held) == set() and held == {"t"}
    credits.give_back("t", 1, 500)
    assert credits.update_held(held) == {"t"} and held == set()
    credits.take("t", 6, 100)  # the count above its low watermark, the bytes far below theirs
    credits.take("t", 4, 0)
    assert credits.update_held(held) == set() and held == {"t"}
    credits.give_back("t", 5, 50)
    assert credits.update_held(held) == set()  # 5 events: not at the low watermark yet
    credits.give_back("t", 1, 50)
    assert credits.update_held(held) == {"t"} and credits.in_flight_bytes == 0


def test_a_record_larger_than_the_bytes_bound_passes_alone() -> None:
    """Only a gate already full is held: with nothing in flight a record of any size is
    taken, holds the topic while it is in flight, and lets it go once finished."""
    credits = TopicCredits(["t"], 10, 4, high_watermark_bytes=1_000, low_watermark_bytes=400)
    held: set[str] = set()
    assert credits.update_held(held) == set() and held == set()  # nothing in flight: taken
    credits.take("t", 1, 5_000)
    assert credits.update_held(held) == set() and held == {"t"}  # alone: nothing more taken
    credits.give_back("t", 1, 5_000)
    assert credits.update_held(held) == {"t"} and held == set()


def test_giving_back_more_bytes_than_taken_raises() -> None:
    gate = CreditGate(10, 4, high_watermark_bytes=100, low_watermark_bytes=50)
    gate.take(2, 30)
    with pytest.raises(RuntimeError, match="more bytes given back than taken"):
        gate.give_back(1, 31)


@pytest.mark.parametrize(("high", "low"), [(10, 10), (10, 11), (0, 0), (5, -1)])
def test_bytes_watermarks_must_be_ordered(high: int, low: int) -> None:
    with pytest.raises(ValueError, match="low_watermark_bytes"):
        CreditGate(10, 5, high_watermark_bytes=high, low_watermark_bytes=low)
    with pytest.raises(ValidationError, match="watermark_bytes"):
        Credits(high_watermark_bytes=high, low_watermark_bytes=low)


def test_the_shipped_default_bounds_a_topic_to_64_mib_and_the_runtime_wires_it() -> None:
    credits = wiring.topic_credits(topology(), hold=lambda: False)
    gate = credits.gate(topology().source.topics[0])
    assert (gate.high_bytes, gate.low_bytes) == (64 * 1024 * 1024, 32 * 1024 * 1024)
