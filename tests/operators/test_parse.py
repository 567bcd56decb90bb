"""parse: raw records → events, and a dead letter with a specific reason for each bad one."""

from __future__ import annotations

import orjson
import pytest
import reactivex

from pipeline import ids
from pipeline.events import DeadLetter, Event, RawRecord
from pipeline.operators.parse import MAX_EVENT_ID_LEN, MAX_ID, ParseRules, parse, parse_batch
from pipeline.testing.builders import OMIT, event_doc, parse_rules, raw_record

NOW = 1_700_000_000_000
RULES = parse_rules()


def doc(**overrides: object) -> dict[str, object]:
    fields = {"event_id": "ev-1", "user_id": 42, "item_id": 7, "type": "click", "ts": NOW - 1_000}
    return event_doc(**(fields | overrides))


def rec(value: bytes | None, offset: int = 0) -> RawRecord:
    return raw_record(
        offset, partition=3, timestamp_ms=NOW, key=b"key", value=value, headers=(("traceparent", b"00-abc"),)
    )


def rec_doc(offset: int = 0, **overrides: object) -> RawRecord:
    return rec(orjson.dumps(doc(**overrides)), offset)


def reject(record: RawRecord, rules: ParseRules = RULES) -> DeadLetter:
    parsed = parse_batch([record], rules, NOW)
    assert parsed.events == []
    (dead,) = parsed.rejects
    assert dead.record is record  # original record, for re-driving
    assert dead.error_class == "InvalidEvent"
    assert dead.attempts == 0
    assert dead.detail
    return dead


def test_valid_event_is_parsed():
    record = rec_doc()
    parsed = parse_batch([record], RULES, NOW)
    assert parsed.rejects == []
    assert parsed.events == [Event("ev-1", 42, 7, "click", NOW - 1_000, record)]
    assert parsed.events[0].ref == ("interactions", 3, 0)


@pytest.mark.parametrize("event_type", ["view", "click", "purchase"])
def test_every_known_type_is_accepted(event_type):
    (event,) = parse_batch([rec_doc(type=event_type)], RULES, NOW).events
    assert event.type == event_type


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"{not json", "malformed_json"),
        (b'{"event_id": "x",', "malformed_json"),
        (b"\xff\xfe\x00garbage", "malformed_json"),  # not UTF-8
        ('{"event_id": "caf\u00e9"}'.encode("latin-1"), "malformed_json"),  # latin-1, not UTF-8
        (b"[1, 2, 3]", "wrong_type"),
        (b"42", "wrong_type"),
        (b'"a string"', "wrong_type"),
        (b"null", "wrong_type"),
        (b"true", "wrong_type"),
    ],
)
def test_bad_bytes(value, reason):
    assert reject(rec(value)).reason == reason


def test_oversized_by_one_byte_and_exact_limit_accepted():
    value = orjson.dumps(doc())
    at_limit = parse_rules(max_event_bytes=len(value))
    assert len(parse_batch([rec(value)], at_limit, NOW).events) == 1
    dead = reject(rec(value), parse_rules(max_event_bytes=len(value) - 1))
    assert dead.reason == "oversized"
    assert str(len(value)) in dead.detail


def test_oversized_is_checked_before_parsing():
    assert reject(rec(b"x" * 70_000)).reason == "oversized"


@pytest.mark.parametrize("field", ["event_id", "type", "user_id", "item_id", "ts"])
def test_missing_field(field):
    dead = reject(rec_doc(**{field: OMIT}))
    assert dead.reason == "missing_field"
    assert field in dead.detail


@pytest.mark.parametrize("field", ["event_id", "type", "user_id", "item_id", "ts"])
def test_null_field_counts_as_missing(field):
    assert reject(rec_doc(**{field: None})).reason == "missing_field"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", 17),
        ("event_id", ""),
        ("event_id", "x" * (MAX_EVENT_ID_LEN + 1)),
        ("event_id", ["ev"]),
        ("user_id", ""),
        ("user_id", 42.0),
        ("item_id", {"sku": 1}),
        ("user_id", True),  # bool is an int subclass in Python, not an id
        ("item_id", False),
        ("item_id", [7]),
        ("ts", "2024-01-01T00:00:00Z"),
        ("ts", 1.7e12),
        ("ts", True),
        ("ts", {"ms": 1}),
    ],
)
def test_wrong_field_type(field, value):
    dead = reject(rec_doc(**{field: value}))
    assert dead.reason == "wrong_type"
    assert field in dead.detail


def test_event_id_at_max_length_is_accepted():
    (event,) = parse_batch([rec_doc(event_id="x" * MAX_EVENT_ID_LEN)], RULES, NOW).events
    assert len(event.event_id) == MAX_EVENT_ID_LEN


@pytest.mark.parametrize("value", ["like", "VIEW", ""])
def test_unknown_type(value):
    assert reject(rec_doc(type=value)).reason == "unknown_type"


@pytest.mark.parametrize("value", [["view"], {"kind": "view"}, 5])
def test_non_string_type_is_a_dead_letter_not_a_crash(value):
    """A ``type`` that is a list, an object or a number dead-letters its record; an
    unhashable one must not raise TypeError out of parse_batch and fail the stream."""
    record = rec_doc(type=value)
    try:
        parsed = parse_batch([record], RULES, NOW)
    except TypeError as exc:
        pytest.fail(f"parse_batch raised {exc!r} instead of dead-lettering the record")
    assert parsed.events == []
    assert [d.reason for d in parsed.rejects] == ["wrong_type"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("user_id", -1), ("item_id", -1), ("user_id", MAX_ID + 1), ("item_id", 2**53), ("item_id", 2**63 - 1)],
)
def test_out_of_range_ids(field, value):
    dead = reject(rec_doc(**{field: value}))
    assert dead.reason == "out_of_range"
    assert field in dead.detail


def test_string_ids_are_their_stable_hash_and_the_user_keeps_its_text():
    (event,) = parse_batch([rec_doc(user_id="cust-18", item_id="SKU-00018")], RULES, NOW).events
    assert event.user_id == ids.string_id("cust-18") >= ids.STRING_BASE
    assert event.item_id == ids.string_id("SKU-00018")
    assert event.user_text == "cust-18"  # the output names the user as it came


@pytest.mark.parametrize(("value", "internal"), [("18", 18), ("0", 0), (str(MAX_ID), MAX_ID)])
def test_an_integers_text_is_that_integer(value, internal):
    (event,) = parse_batch([rec_doc(user_id=value, item_id=value)], RULES, NOW).events
    assert (event.user_id, event.item_id, event.user_text) == (internal, internal, None)


@pytest.mark.parametrize("value", ["0018", "-5", " 18", "1e3", str(MAX_ID + 1)])
def test_other_digit_like_strings_are_ids_of_their_own(value):
    (event,) = parse_batch([rec_doc(user_id=value)], RULES, NOW).events
    assert event.user_id == ids.string_id(value) and event.user_text == value


def test_a_string_id_past_its_length_is_out_of_range():
    dead = reject(rec_doc(item_id="x" * (ids.MAX_TEXT + 1)))
    assert dead.reason == "out_of_range" and "item_id" in dead.detail


def test_a_string_user_key_must_be_its_text_when_the_key_is_the_user():
    rules = parse_rules(key_is_user=True)
    good = rec(orjson.dumps(doc(user_id="cust-18")))._replace(key=b"cust-18")
    assert parse_batch([good], rules, NOW).events[0].user_text == "cust-18"
    assert reject(good._replace(key=b"18"), rules).reason == "key_not_user"


@pytest.mark.parametrize(("field", "value"), [("user_id", 0), ("item_id", 0), ("user_id", MAX_ID)])
def test_id_bounds_are_inclusive(field, value):
    (event,) = parse_batch([rec_doc(**{field: value})], RULES, NOW).events
    assert getattr(event, field) == value


def test_future_timestamp_bound():
    skew = RULES.max_future_skew_ms
    assert len(parse_batch([rec_doc(ts=NOW + skew)], RULES, NOW).events) == 1
    assert reject(rec_doc(ts=NOW + skew + 1)).reason == "future_timestamp"


def test_too_old_bound():
    age = RULES.max_age_ms
    assert len(parse_batch([rec_doc(ts=NOW - age)], RULES, NOW).events) == 1
    assert reject(rec_doc(ts=NOW - age - 1)).reason == "too_old"
    assert reject(rec_doc(ts=0)).reason == "too_old"


def test_rules_are_honoured():
    strict = parse_rules(max_future_skew_ms=0, max_age_ms=10)
    assert reject(rec_doc(ts=NOW + 1), strict).reason == "future_timestamp"
    assert reject(rec_doc(ts=NOW - 11), strict).reason == "too_old"
    assert len(parse_batch([rec_doc(ts=NOW - 10)], strict, NOW).events) == 1


def test_mixed_batch_keeps_valid_events_in_order_and_rejects_each_bad_one():
    records = [
        rec_doc(0, event_id="a"),
        rec(b"", 1),
        rec_doc(2, event_id="b", user_id=1),
        rec(b"{oops", 3),
        rec_doc(4, user_id=-5),
        rec_doc(5, event_id="c", type="purchase"),
        rec_doc(6, type="like"),
        rec_doc(7, ts=NOW + 10**9),
        rec_doc(8, event_id="d"),
    ]
    parsed = parse_batch(records, RULES, NOW)
    assert [e.event_id for e in parsed.events] == ["a", "b", "c", "d"]
    assert [e.source.offset for e in parsed.events] == [0, 2, 5, 8]
    assert [(d.record.offset, d.reason) for d in parsed.rejects] == [
        (1, "empty"),
        (3, "malformed_json"),
        (4, "out_of_range"),
        (6, "unknown_type"),
        (7, "future_timestamp"),
    ]


def test_operator_uses_the_given_clock_per_batch():
    clock = iter([NOW, NOW + 10 * RULES.max_future_skew_ms])
    future = rec_doc(ts=NOW + 2 * RULES.max_future_skew_ms)
    out = []
    reactivex.of([future], [future]).pipe(parse(RULES, clock_ms=lambda: next(clock))).subscribe(out.append)
    assert [(len(b.events), [d.reason for d in b.rejects]) for b in out] == [
        (0, ["future_timestamp"]),
        (1, []),
    ]


def test_operator_on_empty_batch():
    out = []
    reactivex.of([]).pipe(parse(RULES, clock_ms=lambda: NOW)).subscribe(out.append)
    assert len(out) == 1
    assert out[0].events == []
    assert out[0].rejects == []


def test_late_events_are_dead_letters_only_when_the_policy_says_so() -> None:
    late = rec_doc(ts=NOW - 120_000)
    assert parse_batch([late], RULES, NOW).events  # default policy: include
    strict = parse_rules(max_lateness_ms=60_000)
    parsed = parse_batch([late, rec_doc(ts=NOW - 1_000)], strict, NOW)
    assert [d.reason for d in parsed.rejects] == ["late_event"]
    assert len(parsed.events) == 1
