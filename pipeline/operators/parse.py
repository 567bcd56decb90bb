"""parse: raw Kafka records → validated events, and dead letters for the rest.

Per-event work is unavoidable here (one orjson call and a few checks); everything after
this operator moves whole batches."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import orjson
import reactivex
from reactivex import operators as ops

from pipeline import ids
from pipeline.errors import InvalidEvent
from pipeline.events import EVENT_TYPES, DeadLetter, Event, RawRecord

MAX_ID = ids.MAX_INT  # largest integer id: every JSON consumer reads it exactly
MAX_EVENT_ID_LEN = 256
REPLAY_RUN_HEADER = "replay.run"  # set by `pipeline replay` on every record it sends


@dataclass(frozen=True)
class ParseRules:
    """The validation rules (defaults: the schema's, through wiring)."""

    max_event_bytes: int
    max_future_skew_ms: int
    max_age_ms: int
    require_key: bool
    max_lateness_ms: int | None  # set: later events are dead letters ("late_event")
    age_reference: Literal["wall_clock", "replay"]
    key_is_user: bool = False  # durable state: a user's history follows the record key's partition


class ReplayClock:
    """Age for replayed records is judged against their own replay, not the wall clock: the
    newest event time seen so far in the same replay run (``replay.run`` header). A backfill of
    years-old history is then as fresh as live traffic; an event far older than its replay's
    newest is still ``too_old``. Records without the header keep the wall clock."""

    MAX_RUNS = 1_024  # replay runs remembered (least recently seen forgotten)

    def __init__(self) -> None:
        self.newest: OrderedDict[bytes, int] = OrderedDict()

    def reference_ms(self, record: RawRecord, ts: int, now_ms: int) -> int:
        run = next((v for k, v in record.headers if k == REPLAY_RUN_HEADER), None)
        if run is None:
            return now_ms
        newest = max(self.newest.pop(run, ts), ts)
        self.newest[run] = newest
        if len(self.newest) > self.MAX_RUNS:
            self.newest.popitem(last=False)
        return newest


@dataclass(frozen=True)
class ParsedBatch:
    events: list[Event]
    rejects: list[DeadLetter]


def _int_field(doc: dict[str, object], name: str) -> int:
    value = doc.get(name)
    if value is None:
        raise InvalidEvent("missing_field", f"missing required field '{name}'")
    if type(value) is not int:  # bool is an int subclass: reject it too
        raise InvalidEvent("wrong_type", f"field '{name}' must be an integer, got {type(value).__name__}")
    return value


def _id_field(doc: dict[str, object], name: str) -> tuple[int, object]:
    """The id's internal int64 (pipeline/ids.py: an integer, or a string's stable hash) and
    the value as it came."""
    value = doc.get(name)
    if type(value) is int and 0 <= value <= MAX_ID:  # most events: no call
        return value, value
    if value is None:
        raise InvalidEvent("missing_field", f"missing required field '{name}'")
    try:
        return ids.internal_id(value, name), value
    except ids.BadId as bad:
        raise InvalidEvent(bad.reason, bad.detail) from None


def parse_record(
    record: RawRecord, rules: ParseRules, now_ms: int, replays: ReplayClock | None = None
) -> Event:
    """Validate one record; raises InvalidEvent with a machine reason and a readable detail.
    With ``replays`` (age_reference: replay) a replayed record's age is judged against its replay."""
    if record.undecodable is not None:
        raise InvalidEvent("undecodable_record", record.undecodable)
    value = record.value
    if not value:
        raise InvalidEvent("empty", "empty message")
    if rules.require_key and not record.key:
        raise InvalidEvent("missing_key", "record has no key (the topology requires the user id as key)")
    if len(value) > rules.max_event_bytes:
        raise InvalidEvent("oversized", f"{len(value)} bytes exceeds limit {rules.max_event_bytes}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("malformed_json", f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidEvent("wrong_type", f"event must be a JSON object, got {type(doc).__name__}")
    event_id = doc.get("event_id")
    if event_id is None:
        raise InvalidEvent("missing_field", "missing required field 'event_id'")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID_LEN:
        raise InvalidEvent("wrong_type", f"field 'event_id' must be a string of 1..{MAX_EVENT_ID_LEN}")
    event_type = doc.get("type")
    if event_type is None:
        raise InvalidEvent("missing_field", "missing required field 'type'")
    if not isinstance(event_type, str):
        raise InvalidEvent("wrong_type", f"field 'type' must be a string, got {type(event_type).__name__}")
    if event_type not in EVENT_TYPES:
        raise InvalidEvent("unknown_type", f"unknown event type {event_type!r}")
    user_id, user = _id_field(doc, "user_id")
    # a string id keeps its text for the output (an integer's text is the integer)
    user_text = user if isinstance(user, str) and user_id >= ids.STRING_BASE else None
    if rules.key_is_user and record.key != (str(user_id) if user_text is None else user_text).encode():
        raise InvalidEvent(
            "key_not_user",
            f"record key {record.key!r} is not user_id {user!r} (state follows the key's partition)",
        )
    item_id, _ = _id_field(doc, "item_id")
    ts = _int_field(doc, "ts")
    if ts > now_ms + rules.max_future_skew_ms:
        raise InvalidEvent("future_timestamp", f"ts {ts} is {ts - now_ms} ms in the future")
    reference = now_ms if replays is None else replays.reference_ms(record, ts, now_ms)
    if ts < reference - rules.max_age_ms:
        raise InvalidEvent("too_old", f"ts {ts} is older than {rules.max_age_ms} ms")
    if rules.max_lateness_ms is not None and ts < reference - rules.max_lateness_ms:
        raise InvalidEvent(
            "late_event", f"ts {ts} arrived {reference - ts} ms late (limit {rules.max_lateness_ms})"
        )
    return Event(event_id, user_id, item_id, str(event_type), ts, record, user_text)


def parse_batch(
    records: list[RawRecord], rules: ParseRules, now_ms: int, replays: ReplayClock | None = None
) -> ParsedBatch:
    events: list[Event] = []
    rejects: list[DeadLetter] = []
    for record in records:
        try:
            events.append(parse_record(record, rules, now_ms, replays))
        except InvalidEvent as rej:
            rejects.append(DeadLetter(record, rej.reason, type(rej).__name__, rej.detail))
    return ParsedBatch(events, rejects)


def parse(
    rules: ParseRules, clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
) -> Callable[[reactivex.Observable[list[RawRecord]]], reactivex.Observable[ParsedBatch]]:
    """Operator: each list of raw records becomes one ParsedBatch."""
    replays = ReplayClock() if rules.age_reference == "replay" else None
    return ops.map(lambda records: parse_batch(records, rules, clock_ms(), replays))
