"""The audit's in-flight bound: an unanswered input is in flight while it is young and its
group has not committed past it; otherwise it is lost."""

from __future__ import annotations

from pipeline.audit import AuditBooks, InFlight

NOW = 1_800_000_000_000


def _books() -> AuditBooks:
    books = AuditBooks()
    for offset, age_ms in enumerate([60_000, 10_000, 1_000, 500]):
        books.add_input("in", 0, offset, user=7, timestamp_ms=NOW - age_ms)
    books.add_input("in", 1, 0, user=8, timestamp_ms=NOW - 100)
    return books


def test_young_uncommitted_inputs_are_in_flight() -> None:
    summary = _books().summary(InFlight(NOW, 30_000))
    assert summary["lost"] == 1 and summary["in_flight"] == 4, summary  # the minute-old one lost
    assert summary["lost_examples"] == ["in[0]@0"]
    assert summary["in_flight_bound_ms"] == 30_000


def test_a_committed_input_with_no_answer_is_lost_however_young() -> None:
    summary = _books().summary(InFlight(NOW, 30_000, committed={("in", 0): 3}))
    assert summary["lost"] == 3 and summary["in_flight"] == 2, summary
    assert summary["lost_examples"] == ["in[0]@0", "in[0]@1", "in[0]@2"]


def test_no_bound_and_no_in_flight_argument_count_every_unanswered_input_lost() -> None:
    assert _books().summary(InFlight(NOW, 0))["lost"] == 5
    plain = _books().summary()
    assert plain["lost"] == 5 and "in_flight" not in plain


def test_answered_inputs_are_neither() -> None:
    books = _books()
    books.add_recommendation(b'{"user_id": 7, "sources": [{"topic": "in", "partition": 0, "offset": 0}]}')
    summary = books.summary(InFlight(NOW, 30_000))
    assert summary["lost"] == 0 and summary["in_flight"] == 4, summary
