"""enrich: outcomes → recommendation records and dead letters, with what each finishes."""

from __future__ import annotations

import itertools
import time
from collections import Counter

import orjson
import pytest
import reactivex
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from pipeline.events import BatchOutcome, Event, Headers, OutputRecord, Recommendations, SinkBatch
from pipeline.operators.enrich import (
    MAX_DEAD_LETTER_HEADER_COUNT,
    MAX_DEAD_LETTER_HEADERS,
    MAX_LISTED_SOURCES,
    OutputSpec,
    dead_letter_record,
    dead_letters_batch,
    enrich,
    outcome_batch,
)
from pipeline.testing.builders import dead_letter, event, inference_batch, raw_record, user_request

SPEC = OutputSpec(topic="recommendations", dead_letter_topic="interactions.dlq")
TRACE = (("traceparent", b"00-trace-01"), ("tracestate", b"vendor=1"), ("x-internal", b"secret"))


def finished(batch: SinkBatch) -> list[tuple[str, int, int]]:
    """The inputs a batch finishes once written, as (topic, partition, offset)."""
    return [(src.topic, src.partition, src.offset) for src in batch.sources]


def input_event(user: int, partition: int, offset: int, ts: int, headers: Headers = ()) -> Event:
    """An event whose id names its coordinates, keyed and valued like a real input."""
    return event(
        offset,
        user=user,
        partition=partition,
        ts=ts,
        event_id=f"ev-{partition}-{offset}",
        key=f"k{offset}".encode(),
        value=b'{"e":1}',
        headers=headers,
    )


def outcome(now_ms: float):
    row1 = user_request(
        input_event(7, 0, 10, int(now_ms) - 1_500, headers=(("traceparent", b"old"),)),
        input_event(7, 1, 4, int(now_ms) - 1_200, headers=TRACE),
        history=(101, 102),
    )
    row2 = user_request(input_event(8, 0, 11, int(now_ms) - 900), history=(105,))
    failed_row = user_request(input_event(9, 2, 30, int(now_ms) - 800), history=(106,))
    batch = inference_batch(
        row1, row2, failed_row, window_start_ms=int(now_ms) - 100, window_end_ms=int(now_ms) - 80
    )
    result = BatchOutcome(
        batch,
        answers=[
            (row1, Recommendations((5, 6, 7), (0.912346, 0.5, 0.25))),  # as the codec rounds them
            (row2, Recommendations((1,), (0.1,))),
        ],
        failures=[
            dead_letter(
                failed_row.events[0].source,
                reason="invalid_argument",
                error_class="InvalidInput",
                detail="bad row",
                attempts=1,
            )
        ],
        model_name="recommender",
        model_version="3",
        dispatched_ms=now_ms - 70,
        completed_ms=now_ms - 40,
    )
    return result, row1, row2, failed_row


def test_recommendation_json_has_the_documented_fields():
    now = time.time() * 1000.0
    result, _, _, _ = outcome(now)
    sink = outcome_batch(result, SPEC)
    rec = sink.records[0]
    assert rec.topic == "recommendations"
    assert rec.key == b"7"
    body = orjson.loads(rec.value)
    assert body["event_id"] == "rec-interactions-0-10"  # the row's first source record
    assert body["user_id"] == 7
    assert body["items"] == [
        {"item_id": 5, "score": 0.912346},
        {"item_id": 6, "score": 0.5},
        {"item_id": 7, "score": 0.25},
    ]
    assert body["model"] == {"name": "recommender", "version": "3"}
    assert body["sources"] == [
        {"event_id": "ev-0-10", "topic": "interactions", "partition": 0, "offset": 10},
        {"event_id": "ev-1-4", "topic": "interactions", "partition": 1, "offset": 4},
    ]
    assert body["window"] == {"start_ms": int(now) - 100, "end_ms": int(now) - 80}
    timings = body["timings"]
    assert set(timings) == {"queued_ms", "inference_ms", "end_to_end_ms"}
    assert timings["queued_ms"] == round((now - 70) - (int(now) - 80), 3)
    assert timings["inference_ms"] == 30.0
    # From the row's oldest source record (1.5 s ago) to emission.
    assert 1_500 <= timings["end_to_end_ms"] < 1_500 + 30_000
    assert body["lane"] == "default"
    assert int(now) <= body["emitted_at_ms"] < int(now) + 30_000


def test_second_row_is_its_own_record():
    now = time.time() * 1000.0
    result, _, _, _ = outcome(now)
    body = orjson.loads(outcome_batch(result, SPEC).records[1].value)
    assert body["user_id"] == 8
    assert body["event_id"] == "rec-interactions-0-11"
    assert body["items"] == [{"item_id": 1, "score": 0.1}]
    assert [s["offset"] for s in body["sources"]] == [11]


def test_only_listed_trace_headers_are_carried_from_the_latest_event():
    result, _, _, _ = outcome(time.time() * 1000.0)
    sink = outcome_batch(result, SPEC)
    assert sink.records[0].headers == (("traceparent", b"00-trace-01"), ("tracestate", b"vendor=1"))
    assert sink.records[1].headers == ()  # its event had none


def test_carry_headers_is_configurable():
    spec = OutputSpec("recs", "dlq", carry_headers=frozenset({"x-internal"}))
    result, _, _, _ = outcome(time.time() * 1000.0)
    assert outcome_batch(result, spec).records[0].headers == (("x-internal", b"secret"),)
    none = OutputSpec("recs", "dlq", carry_headers=frozenset())
    assert outcome_batch(result, none).records[0].headers == ()


def test_failures_become_dead_letters_after_the_recommendations():
    result, _, _, failed_row = outcome(time.time() * 1000.0)
    sink = outcome_batch(result, SPEC)
    assert [r.topic for r in sink.records] == ["recommendations", "recommendations", "interactions.dlq"]
    dead = sink.records[2]
    src = failed_row.events[0].source
    assert dead.value == src.value
    assert dead.key == src.key
    headers = dict(dead.headers)
    assert headers["dlq.reason"] == b"invalid_argument"
    assert headers["dlq.error_class"] == b"InvalidInput"
    assert headers["dlq.attempts"] == b"1"
    assert sink.recommendations == 2
    assert sink.dead_letters == 1


def test_finishes_cover_every_source_ref_exactly_once():
    result, row1, row2, failed_row = outcome(time.time() * 1000.0)
    sink = outcome_batch(result, SPEC)
    expected = [e.ref for row in (row1, row2, failed_row) for e in row.events]
    assert len(expected) == 4
    assert Counter(finished(sink)) == Counter(expected)


def test_dead_letter_record_keeps_original_bytes_key_and_headers_and_adds_dlq_headers():
    headers = (("traceparent", b"00-x"), ("custom", b"\x00\xff"))
    src = raw_record(
        1234,
        partition=5,
        timestamp_ms=1_699_999_999_000,
        key=b"user-9",
        value=b"\xff not json \x00",
        headers=headers,
    )
    dead = dead_letter(
        src,
        reason="malformed_json",
        error_class="InvalidEvent",
        detail="not valid UTF-8 JSON: caf\u00e9",
        attempts=0,
    )
    out = dead_letter_record(dead, "interactions.dlq")
    assert out.topic == "interactions.dlq"
    assert out.key == b"user-9"
    assert out.value == b"\xff not json \x00"
    assert out.headers[:2] == headers  # originals first, untouched
    assert dict(out.headers[2:]) == {
        "dlq.reason": b"malformed_json",
        "dlq.error_class": b"InvalidEvent",
        "dlq.detail": "not valid UTF-8 JSON: caf\u00e9".encode(),
        "dlq.attempts": b"0",
        "dlq.source_topic": b"interactions",
        "dlq.source_partition": b"5",
        "dlq.source_offset": b"1234",
        "dlq.source_timestamp": b"1699999999000",
    }
    assert all(k.startswith("dlq.") for k, _ in out.headers[2:])


def test_dead_letter_of_an_empty_record_and_long_detail():
    src = raw_record(1, value=None)
    out = dead_letter_record(dead_letter(src, reason="empty", detail="x" * 5_000), "dlq")
    assert out.value == b""
    assert out.key is None
    assert len(dict(out.headers)["dlq.detail"]) == 1_024


def test_dead_letters_batch_finishes_each_record():
    dead = [dead_letter(raw_record(o), reason="empty", detail="empty message") for o in (3, 4, 9)]
    sink = dead_letters_batch(dead, "interactions.dlq")
    assert isinstance(sink, SinkBatch)
    assert [r.topic for r in sink.records] == ["interactions.dlq"] * 3
    assert finished(sink) == [
        ("interactions", 0, 3),
        ("interactions", 0, 4),
        ("interactions", 0, 9),
    ]
    assert sink.dead_letters == 3
    assert sink.recommendations == 0


def test_all_failed_outcome_has_no_recommendations():
    result, _, _, failed_row = outcome(time.time() * 1000.0)
    result.answers.clear()
    sink = outcome_batch(result, SPEC)
    assert [r.topic for r in sink.records] == ["interactions.dlq"]
    assert finished(sink) == [failed_row.events[0].ref]


def test_operator_maps_each_outcome():
    result, _, _, _ = outcome(time.time() * 1000.0)
    out = []
    reactivex.of(result, result).pipe(enrich(SPEC)).subscribe(out.append)
    assert len(out) == 2
    assert [len(s.records) for s in out] == [3, 3]


def test_a_recommendation_lists_a_bounded_number_of_sources_and_counts_them_all() -> None:
    """One user with thousands of events in a window (a bot, a backfill) must not make a
    record past the producer's max_request_size: the list is capped, the count kept, and
    every input is still finished once the record is written."""
    now = time.time() * 1000
    events = [input_event(7, 0, offset, int(now) - 1_000) for offset in range(MAX_LISTED_SOURCES * 3)]
    row = user_request(*events, history=(101,))
    batch = inference_batch(row, window_start_ms=int(now) - 100, window_end_ms=int(now) - 80)
    out = outcome_batch(BatchOutcome(batch, answers=[(row, Recommendations((5,), (0.5,)))]), SPEC)
    doc = orjson.loads(out.records[0].value)
    assert len(doc["sources"]) == MAX_LISTED_SOURCES
    assert doc["source_count"] == MAX_LISTED_SOURCES * 3
    assert len(out.records[0].value) < 20_000
    assert len(finished(out)) == MAX_LISTED_SOURCES * 3


def test_a_dead_letter_keeps_its_inputs_headers_up_to_a_budget() -> None:
    """An input with a 1 MB header: its dead letter would be refused by the broker like the
    input's value would; headers past the budget are dropped and counted instead."""
    big = [("traceparent", b"00-1-01"), ("blob", b"x" * 1_000_000), ("after", b"1")]
    dead = dead_letter(
        raw_record(1, headers=tuple(big)),
        reason="output_refused",
        error_class="MessageSizeTooLargeError",
    )
    headers = dead_letter_record(dead, "dlq").headers
    assert headers[0] == ("traceparent", b"00-1-01")
    names = [name for name, _ in headers]
    assert "blob" not in names and "after" not in names
    assert dict(headers)["dlq.headers_dropped"] == b"2"
    assert sum(len(n) + len(v) for n, v in headers) < MAX_DEAD_LETTER_HEADERS + 2_000
    small = dead_letter(raw_record(2, headers=TRACE), reason="malformed_json")
    assert "dlq.headers_dropped" not in dict(dead_letter_record(small, "dlq").headers)


def test_a_null_header_value_neither_crashes_a_recommendation_nor_a_dead_letter() -> None:
    """aiokafka reads a null header value as None: it is carried, bounded and left alone."""
    headers = (("traceparent", None), ("tracestate", None))
    dead = dead_letter(raw_record(3, headers=headers), reason="malformed_json")  # type: ignore[arg-type]
    assert ("traceparent", None) in dead_letter_record(dead, "dlq").headers
    row = user_request(input_event(7, 0, 11, 1_000, headers=headers))  # type: ignore[arg-type]
    now = int(time.time() * 1000)
    batch = inference_batch(row, window_start_ms=now - 100, window_end_ms=now - 80)
    out = outcome_batch(BatchOutcome(batch, answers=[(row, Recommendations((5,), (0.5,)))]), SPEC)
    assert out.records[0].headers == headers


# -- a dead letter's encoded size (issue 24, item 3) ------------------------------------------

PRODUCER_LIMIT = 1_048_576  # aiokafka's default max_request_size, which the sink's producers keep


def encoded_size(rec: OutputRecord) -> int:
    """The record as the producer encodes it: a v2 batch holding it alone (aiokafka's own
    builder), and the estimate ``send`` checks against max_request_size."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    headers = list(rec.headers)
    assert builder.append(0, timestamp=None, key=rec.key, value=rec.value, headers=headers) is not None
    built = len(builder.build())
    estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes(rec.key, rec.value, headers)
    return max(built, estimate)


def test_sixty_thousand_one_letter_headers_make_a_dead_letter_the_producer_accepts() -> None:
    """The issue's case: an 899 kB input with 60,000 one-letter headers made a 1,079,296-byte
    dead letter (the header budget counted names and values, not their encoding)."""
    src = raw_record(3, value=b"v" * 899_000, headers=tuple(("h", b"") for _ in range(60_000)))
    out = dead_letter_record(dead_letter(src, reason="malformed_json"), "dlq")
    assert encoded_size(out) <= PRODUCER_LIMIT - 4_096  # room left for the trace context headers
    headers = dict(out.headers)
    assert len(out.headers) <= MAX_DEAD_LETTER_HEADER_COUNT + 20
    assert int(headers["dlq.headers_dropped"]) > 0
    assert headers["dlq.reason"] == b"malformed_json" and headers["dlq.source_offset"] == b"3"


# Every combination of these: tiny headers by the thousand, a huge value, a huge key, one
# huge header, a long detail, alone and together (1,920 dead letters).
KEY_SIZES = (None, 0, 70_000, 1_048_576)
VALUE_SIZES = (0, 899_999, 900_001, 2_000_000)
HEADER_COUNTS = (0, 1_000, 60_000)
HEADER_SHAPES = (("h", b""), ("", None), ("\u00e9" * 20, b"x" * 64))  # one letter, empty, multi-byte
BIG_HEADERS = (0, 70_000, 1_000_000)
DETAILS = ("", "\u00e9" * 3_000)


@pytest.mark.parametrize("key_size", KEY_SIZES)
@pytest.mark.parametrize("value_size", VALUE_SIZES)
def test_any_input_makes_a_dead_letter_below_the_producers_limit(
    key_size: int | None, value_size: int
) -> None:
    """Many tiny headers, a huge value, a huge key, a huge header, all at once: the dead
    letter's encoding stays under the producer's limit, with room for the trace context,
    and what was cut is said in a marker header."""
    for count, shape, big, detail in itertools.product(HEADER_COUNTS, HEADER_SHAPES, BIG_HEADERS, DETAILS):
        headers = [shape] * count
        if big:
            headers.insert(len(headers) // 2, ("big", b"b" * big))
        src = raw_record(
            1,
            key=None if key_size is None else b"k" * key_size,
            value=b"v" * value_size,
            headers=tuple(headers),
        )
        out = dead_letter_record(dead_letter(src, reason="output_refused", detail=detail), "dlq")
        case = f"key {key_size}, value {value_size}, {count} x {shape[0]!r}, big {big}, detail {len(detail)}"
        assert encoded_size(out) <= PRODUCER_LIMIT - 4_096, case
        named = dict(out.headers)
        assert named["dlq.reason"] == b"output_refused", case
        assert named["dlq.source_offset"] == b"1", case
        if len(out.value) < value_size:
            assert named["dlq.truncated_from"] == str(value_size).encode(), case
        if key_size is not None and len(out.key or b"") < key_size:
            assert named["dlq.key_truncated_from"] == str(key_size).encode(), case
        kept = [(name, value) for name, value in out.headers if not name.startswith("dlq.")]
        assert len(kept) <= MAX_DEAD_LETTER_HEADER_COUNT, case
        if len(kept) < len(headers):
            assert named["dlq.headers_dropped"] == str(len(headers) - len(kept)).encode(), case
            assert kept == headers[: len(kept)], case  # a prefix, in order
