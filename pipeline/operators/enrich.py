"""enrich: dispatcher outcomes → output records (recommendations and dead letters), each
with the source records it finishes once the broker has acknowledged it."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from reactivex import Observable
from reactivex import operators as ops

from pipeline.events import (
    BatchOutcome,
    DeadLetter,
    Event,
    Headers,
    OutputRecord,
    SinkBatch,
    UserRequest,
)

if TYPE_CHECKING:
    from pipeline.tracing import Tracing

DLQ_HEADER_PREFIX = "dlq."


@dataclass(frozen=True)
class OutputSpec:
    topic: str
    dead_letter_topic: str
    carry_headers: frozenset[str] = frozenset({"traceparent", "tracestate"})
    tracing: Tracing | None = None  # spans per output; its context replaces the carried traceparent
    experiment: str | None = None  # its id: outputs name it and the arm that answered


# A recommendation lists at most this many of its source events (the first ones) and counts
# them all in ``source_count``: one user with thousands of events in a window (a bot, a
# backfill) would otherwise make a record past the producer's max_request_size. The
# audit accounts for the unlisted ones by user (docs/reliability.md).
MAX_LISTED_SOURCES = 100


# A dead letter must be accepted by the producer, or it is retried for ever and pins its
# partition's offsets. The producer refuses a record whose encoding passes max_request_size
# (aiokafka's estimate: a batch header, a record's overhead, the key, the value, and each
# header's name and value with their varint lengths); the sink's producers set it to this.
PRODUCER_MAX_REQUEST_BYTES = 1_048_576
# A dead letter is encoded in at most this much: what is left is room for the trace context
# that tracing puts in its headers (a traceparent, a tracestate: well under 1 KiB).
MAX_DEAD_LETTER_BYTES = PRODUCER_MAX_REQUEST_BYTES - 8_192
# Within it, a dead letter carries its input's bytes up to this many (``dlq.truncated_from``
# says when cut; the input itself stays in its topic, named by the dlq.source_* headers), its
# key up to this many (``dlq.key_truncated_from``), and its headers in their order up to
# this many encoded bytes and this many headers: a header past either is dropped, and
# ``dlq.headers_dropped`` counts them (60,000 one-letter headers are 180 kB encoded).
MAX_DEAD_LETTER_VALUE = 900_000
MAX_DEAD_LETTER_KEY = 16 * 1024
MAX_DEAD_LETTER_HEADERS = 64 * 1024
MAX_DEAD_LETTER_HEADER_COUNT = 1_000
_MARKER_ROOM = 64  # a marker header added after the room for the value was measured


def _varint_size(n: int) -> int:
    """Bytes of ``n`` as Kafka's record format writes it (a zigzag varint)."""
    z, size = (n << 1) ^ (n >> 63), 1
    while z >= 0x80:
        z >>= 7
        size += 1
    return size


def _header_size(name: str, value: bytes | None) -> int:
    encoded = len(name.encode("utf-8"))
    return _varint_size(encoded) + encoded + (1 if value is None else _varint_size(len(value)) + len(value))


def _bounded_headers(headers: Headers) -> Headers:
    """The input's headers in their order, up to MAX_DEAD_LETTER_HEADER_COUNT of them and
    MAX_DEAD_LETTER_HEADERS encoded bytes; the rest dropped and counted."""
    used = 0
    for i, (name, value) in enumerate(headers):  # a null header value is None
        used += _header_size(name, value)
        if i >= MAX_DEAD_LETTER_HEADER_COUNT or used > MAX_DEAD_LETTER_HEADERS:
            return (*headers[:i], ("dlq.headers_dropped", str(len(headers) - i).encode()))
    return headers


def encoded_size(key: bytes | None, value: bytes, headers: Headers) -> int:
    """What the producer measures a record at before it sends it (against max_request_size)."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers)))


def dead_letter_record(dead: DeadLetter, topic: str) -> OutputRecord:
    """The original bytes, key and headers, cut to fit MAX_DEAD_LETTER_BYTES encoded (each
    cut said in a ``dlq.`` header), with why and where from in headers: re-drivable as is."""
    src = dead.record
    key, value = src.key, src.value or b""
    marks: Headers = ()
    if key is not None and len(key) > MAX_DEAD_LETTER_KEY:
        key, marks = key[:MAX_DEAD_LETTER_KEY], (("dlq.key_truncated_from", str(len(key)).encode()),)
    why: Headers = (
        ("dlq.reason", dead.reason.encode()),
        ("dlq.error_class", dead.error_class.encode()),
        ("dlq.detail", dead.detail.encode("utf-8", "replace")[:1024]),
        ("dlq.attempts", str(dead.attempts).encode()),
        ("dlq.source_topic", src.topic.encode()),
        ("dlq.source_partition", str(src.partition).encode()),
        ("dlq.source_offset", str(src.offset).encode()),
        ("dlq.source_timestamp", str(src.timestamp_ms).encode()),
    )
    headers = (*_bounded_headers(src.headers), *marks)
    room = MAX_DEAD_LETTER_BYTES - _MARKER_ROOM - encoded_size(key, b"", (*headers, *why))
    if len(value) > min(MAX_DEAD_LETTER_VALUE, room):
        whole = len(value)
        value = value[: max(0, min(MAX_DEAD_LETTER_VALUE, room))]
        headers = (*headers, ("dlq.truncated_from", str(whole).encode()))
    headers = (*headers, *why)
    while (over := encoded_size(key, value, headers) - MAX_DEAD_LETTER_BYTES) > 0 and value:
        value = value[: max(0, len(value) - over)]  # not reached: the room above is measured
    return OutputRecord(topic, key, value, headers, (src,))


def dead_letters_batch(dead: list[DeadLetter], topic: str) -> SinkBatch:
    return SinkBatch(tuple(dead_letter_record(d, topic) for d in dead), dead_letters=len(dead))


def _listed(event: Event) -> dict[str, object]:
    src = event.source
    return {"event_id": event.event_id, "topic": src.topic, "partition": src.partition, "offset": src.offset}


def recommendation_values(outcome: BatchOutcome, now_ms: float, experiment: str | None = None) -> list[bytes]:
    """The JSON of each answered row. What the rows of a batch share is serialized once
    (orjson fragments); scores come rounded from the codec, in one numpy call rather than a
    ``round`` per item."""
    batch = outcome.batch
    dumps, fragment = orjson.dumps, orjson.Fragment
    served_by: dict[str, str] = {"name": outcome.model_name, "version": outcome.model_version}
    if experiment is not None:
        served_by.update(experiment=experiment, arm=outcome.arm)
    model = fragment(dumps(served_by))
    window = fragment(dumps({"start_ms": batch.window_start_ms, "end_ms": batch.window_end_ms}))
    queued_ms = round(outcome.dispatched_ms - batch.window_end_ms, 3)
    inference_ms = round(outcome.completed_ms - outcome.dispatched_ms, 3)
    emitted_at_ms = int(now_ms)
    lane = batch.lane
    values = []
    for row, recs in outcome.answers:
        events = row.events
        src = events[0].source
        if len(events) == 1:  # most rows: no minimum to take, one source to list (inline: no call)
            first = src.timestamp_ms
            sources = [
                {
                    "event_id": events[0].event_id,
                    "topic": src.topic,
                    "partition": src.partition,
                    "offset": src.offset,
                }
            ]
        else:
            first = min(e.source.timestamp_ms for e in events)
            sources = [_listed(e) for e in events[:MAX_LISTED_SOURCES]]
        user_text = events[0].user_text  # a string id: as it came (user_id is its hash)
        item_ids = recs.item_ids if recs.keys is None else recs.keys  # the catalogue's own ids
        values.append(
            dumps(
                {
                    "event_id": f"rec-{src.topic}-{src.partition}-{src.offset}",
                    "user_id": row.user_id if user_text is None else user_text,
                    "items": [{"item_id": i, "score": s} for i, s in zip(item_ids, recs.scores, strict=True)],
                    "model": model,
                    "sources": sources,
                    "source_count": len(events),
                    "window": window,
                    "lane": lane,
                    "timings": {
                        "queued_ms": queued_ms,
                        "inference_ms": inference_ms,
                        "end_to_end_ms": round(now_ms - first, 3),
                    },
                    "emitted_at_ms": emitted_at_ms,
                }
            )
        )
    return values


_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def continue_trace(traceparent: bytes) -> bytes:
    """W3C trace context: the recommendation continues its input's trace (same trace id and
    flags) as a span of its own (a new parent id). A value that is not a valid traceparent is
    carried as it came."""
    match = _TRACEPARENT.match(traceparent)
    if match is None or match[1] == b"ff" or match[2] == b"0" * 32:
        return traceparent
    # a span id needs to be unique, not secret (OpenTelemetry's SDK draws them the same way)
    return b"-".join((match[1], match[2], b"%016x" % (random.getrandbits(64) or 1), match[4]))


def _carried(row: UserRequest, names: frozenset[str]) -> Headers:
    latest = row.events[-1].source.headers
    return tuple(
        (k, continue_trace(v) if k == "traceparent" and isinstance(v, bytes) else v)
        for k, v in latest
        if k in names
    )


def user_key(row: UserRequest) -> bytes:
    """The recommendation's record key: the user id's text as it came."""
    text = row.events[0].user_text
    return (str(row.user_id) if text is None else text).encode()


def outcome_batch(outcome: BatchOutcome, spec: OutputSpec) -> SinkBatch:
    now_ms = time.time() * 1000.0
    carry = spec.carry_headers
    values = recommendation_values(outcome, now_ms, spec.experiment)
    records = [
        OutputRecord(
            spec.topic,
            user_key(row),
            value,
            _carried(row, carry) if row.events[-1].source.headers else (),
            (row.events[0].source,) if len(row.events) == 1 else tuple(e.source for e in row.events),
        )
        for (row, _), value in zip(outcome.answers, values, strict=True)
    ]
    dead = [dead_letter_record(d, spec.dead_letter_topic) for d in outcome.failures]
    if spec.tracing is not None:
        records, dead = _traced(spec.tracing, outcome, records, dead, now_ms)
    records.extend(dead)
    if outcome.batch.examples or outcome.examples:  # joined examples: no input of their own
        records.extend((*outcome.batch.examples, *outcome.examples))
    return SinkBatch(
        tuple(records),
        recommendations=len(outcome.answers),
        dead_letters=len(outcome.failures),
        duplicates=sum(row.duplicates for row, _ in outcome.answers),
        lane=outcome.batch.lane,
    )


def _traced(
    tracing: Tracing,
    outcome: BatchOutcome,
    records: list[OutputRecord],
    dead: list[OutputRecord],
    now_ms: float,
) -> tuple[list[OutputRecord], list[OutputRecord]]:
    """The same records, each with its open spans and their context in its headers."""
    traced = []
    for rec, (row, _) in zip(records, outcome.answers, strict=True):
        headers, spans = tracing.recommendation(row, outcome, rec.headers, now_ms, rec.topic)
        traced.append(rec._replace(headers=headers, trace=spans))
    traced_dead = []
    for rec, failure in zip(dead, outcome.failures, strict=True):
        headers, spans = tracing.dead_letter(failure, outcome, rec.headers, now_ms, rec.topic)
        traced_dead.append(rec._replace(headers=headers, trace=spans))
    return traced, traced_dead


def enrich(spec: OutputSpec) -> Callable[[Observable[BatchOutcome]], Observable[SinkBatch]]:
    return ops.map(lambda outcome: outcome_batch(outcome, spec))
