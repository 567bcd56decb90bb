"""The audit's books: unlisted sources accounted for by user, a time range, and memory that
follows the audited inputs only."""

from __future__ import annotations

import orjson
import pytest

from pipeline.audit import AuditBooks, Ledger, TimeRange, input_user, parse_instant

NOW_MS = 1_800_000_000_000


def rec(user: int, offsets: list[int], count: int | None = None) -> bytes:
    doc: dict[str, object] = {
        "user_id": user,
        "sources": [{"topic": "in", "partition": 0, "offset": o} for o in offsets],
    }
    if count is not None:
        doc["source_count"] = count
    return orjson.dumps(doc)


def test_unlisted_sources_are_accounted_for_by_their_user_only() -> None:
    ledger = Ledger()
    for offset in range(5):
        ledger.add_input(("in", 0, offset), 1_000, user_id=7)
    ledger.add_input(("in", 0, 5), 1_000, user_id=8)
    ledger.add_recommendation(rec(7, [0, 1], count=5), 2_000)  # offsets 2-4 not listed
    summary = ledger.summary()
    assert summary["lost"] == 1 and summary["lost_examples"] == ["in[0]@5"]  # user 8's
    assert summary["answered_unlisted"] == 3
    assert ledger.accounted() == 5


def test_an_unlisted_count_does_not_cover_more_inputs_than_it_says() -> None:
    ledger = Ledger()
    for offset in range(4):
        ledger.add_input(("in", 0, offset), 1_000, user_id=7)
    ledger.add_recommendation(rec(7, [0], count=2), 2_000)
    assert ledger.summary()["lost"] == 2


DLQ = [
    ("dlq.source_topic", b"in"),
    ("dlq.source_partition", b"0"),
    ("dlq.source_offset", b"9"),
    ("dlq.reason", b"malformed_json"),
]


def test_the_audit_books_keep_only_outputs_of_audited_inputs() -> None:
    books = AuditBooks()
    for offset in (3, 5, 9, 9, 11):  # 9 read twice (a reader that stepped back)
        books.add_input("in", 0, offset, user=7)
    books.add_input("in", 1, 0, user=None)  # not an event: dead-lettered
    books.add_recommendation(rec(7, [1, 2, 3, 5]))  # 1 and 2: before the range, ignored
    books.add_recommendation(rec(7, [5]))  # a duplicate
    books.add_dead_letter(tuple(DLQ))
    summary = books.summary()
    assert summary["events_in"] == 5
    assert summary["duplicates"] == 1
    assert summary["lost"] == 2 and summary["lost_examples"] == ["in[0]@11", "in[1]@0"]
    assert summary["dead_letter_reasons"] == {"malformed_json": 1}
    assert summary["recommendations"] == 2 and summary["dead_letters"] == 1


def test_the_audit_books_cover_unlisted_inputs_by_user() -> None:
    books = AuditBooks()
    for offset in range(5):
        books.add_input("in", 0, offset, user=7 if offset < 4 else 8)
    books.add_recommendation(rec(7, [0], count=3))
    summary = books.summary()
    assert summary["lost"] == 2 and summary["answered_unlisted"] == 2
    assert summary["lost_examples"] == ["in[0]@3", "in[0]@4"]


def test_the_audit_books_hold_a_few_bytes_an_input() -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        books = AuditBooks()
        before = tracemalloc.get_traced_memory()[0]
        for offset in range(100_000):
            books.add_input("in", offset % 4, offset // 4, user=offset % 1000)
        per_input = (tracemalloc.get_traced_memory()[0] - before) / 100_000
    finally:
        tracemalloc.stop()
    assert per_input < 40, per_input


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", NOW_MS - 90 * 60_000),
        ("2h", NOW_MS - 2 * 3_600_000),
        ("1.5d", NOW_MS - int(1.5 * 86_400_000)),
        ("30s", NOW_MS - 30_000),
        ("2026-11-27T10:00:00Z", 1_795_773_600_000),
        ("2026-11-27T10:00:00", 1_795_773_600_000),  # no zone: UTC
        ("2026-11-27T11:00:00+01:00", 1_795_773_600_000),
    ],
)
def test_instants_are_iso_times_or_durations_ago(text: str, expected: int) -> None:
    assert parse_instant(text, NOW_MS) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h30", "-5m", ""])
def test_an_unreadable_instant_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_instant(text, NOW_MS)


def test_a_time_range_is_half_open() -> None:
    window = TimeRange(1_000, 2_000)
    assert [window.holds(t) for t in (999, 1_000, 1_999, 2_000)] == [False, True, True, False]
    assert TimeRange().holds(0) and TimeRange(since_ms=5).holds(10**15)


@pytest.mark.parametrize(
    ("value", "user"),
    [
        (b'{"user_id": 7}', 7),
        (b"not json", None),
        (b'{"user_id": "7"}', 7),
        (b'{"user_id": 7.0}', None),
        (None, None),
        (b"[]", None),
    ],
)
def test_the_user_of_an_input_is_read_when_it_is_an_event(value: bytes | None, user: int | None) -> None:
    assert input_user(value) == user


def test_a_replayed_copy_of_a_capped_recommendation_does_not_cover_real_losses() -> None:
    books, ledger = AuditBooks(), Ledger()
    for offset in range(6):
        books.add_input("in", 0, offset, user=7)
        ledger.add_input(("in", 0, offset), 1_000, user_id=7)
    capped = rec(7, [0], count=3)  # answers 0 and two unlisted (1, 2); 3-5 are lost
    for _ in range(2):  # the second one replayed after a crash
        books.add_recommendation(capped)
        ledger.add_recommendation(capped, 2_000)
    assert books.summary()["lost"] == 3 and books.summary()["duplicates"] == 1
    assert ledger.summary()["lost"] == 3
