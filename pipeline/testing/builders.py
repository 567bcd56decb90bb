"""Builders of the pipeline's value types (pipeline/events.py) and of input event documents,
for tests: every field has a default, so a test names only what matters to it.

Conventions, shared by the builders so that their values line up:
- a record's ``offset`` is its identity: an event's id defaults to ``e{offset}`` and its item
  to ``100 + offset``;
- an event's Kafka timestamp defaults to its ``ts`` field;
- a request's history defaults to its events' items, in order.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pipeline import wiring
from pipeline.control.lane_guard import GuardedLane
from pipeline.control.lanes import LaneSpec
from pipeline.events import DeadLetter, Event, Headers, InferenceBatch, RawRecord, UserRequest
from pipeline.operators.parse import ParseRules
from pipeline.topology.loader import load_topology
from pipeline.topology.schema import Lane, Topology

SHIPPED_TOPOLOGY = Path(__file__).resolve().parents[1] / "topologies" / "recommendations.yaml"
TOPIC = "interactions"


def raw_record(
    offset: int = 0,
    *,
    topic: str = TOPIC,
    partition: int = 0,
    timestamp_ms: int = 0,
    key: bytes | None = None,
    value: bytes | None = b"{}",
    headers: Headers = (),
    undecodable: str | None = None,
    generation: int = 0,
) -> RawRecord:
    """A consumed record, as the source hands it on."""
    return RawRecord(topic, partition, offset, timestamp_ms, key, value, headers, undecodable, generation)


def event(
    offset: int = 0,
    *,
    user: int = 1,
    item: int | None = None,
    type: str = "view",
    ts: int = 0,
    event_id: str | None = None,
    topic: str = TOPIC,
    partition: int = 0,
    timestamp_ms: int | None = None,
    key: bytes | None = None,
    value: bytes | None = b"{}",
    headers: Headers = (),
) -> Event:
    """A parsed event and the record it came from (at ``offset``)."""
    record = raw_record(
        offset,
        topic=topic,
        partition=partition,
        timestamp_ms=ts if timestamp_ms is None else timestamp_ms,
        key=key,
        value=value,
        headers=headers,
    )
    return Event(
        f"e{offset}" if event_id is None else event_id,
        user,
        100 + offset if item is None else item,
        type,
        ts,
        record,
    )


def user_request(
    *events: Event, user: int | None = None, history: tuple[int, ...] | None = None, duplicates: int = 0
) -> UserRequest:
    """One user's row of a batch: the user of its first event (else 1) unless given."""
    if user is None:
        user = events[0].user_id if events else 1
    if history is None:
        history = tuple(e.item_id for e in events)
    return UserRequest(user, history, events, duplicates)


def inference_batch(
    *requests: UserRequest,
    window_start_ms: int = 0,
    window_end_ms: int = 0,
    lane: str = "default",
    priority: int = 0,
) -> InferenceBatch:
    return InferenceBatch(requests, window_start_ms, window_end_ms, lane, priority)


_serials = itertools.count()


def distinct_batch(lane: str = "default", users: int = 0) -> InferenceBatch:
    """A batch of ``lane`` unlike any other built here: its ``window_start_ms`` is a serial
    number (batches are told apart by it), its rows users 0..``users``-1 without events."""
    rows = tuple(user_request(user=u, history=()) for u in range(users))
    return inference_batch(*rows, window_start_ms=next(_serials), lane=lane)


def dead_letter(
    record: RawRecord | None = None,
    *,
    reason: str = "malformed_json",
    error_class: str = "InvalidEvent",
    detail: str = "",
    attempts: int = 0,
) -> DeadLetter:
    return DeadLetter(raw_record() if record is None else record, reason, error_class, detail, attempts)


# -- input documents (what is produced to the input topic) -----------------------------------

OMIT: Any = object()  # as a field's value: leave the field out of the document


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event_doc(**fields: Any) -> dict[str, Any]:
    """A valid interaction event's JSON document, with ``fields`` replaced (``OMIT``: left
    out). Without an ``event_id`` it gets a new one; without a ``ts``, the time now."""
    doc: dict[str, Any] = {
        "event_id": f"e-{time.monotonic_ns()}",
        "user_id": 1,
        "item_id": 2,
        "type": "view",
        "ts": now_ms(),
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not OMIT}


def event_json(**fields: Any) -> bytes:
    """``event_doc(**fields)`` as the bytes produced."""
    return orjson.dumps(event_doc(**fields))


def input_record(
    *, partition: int = 0, topic: str = TOPIC, key: bytes | None = None, **fields: Any
) -> RawRecord:
    """A consumed input record holding ``event_json(**fields)``, stamped now."""
    return raw_record(
        0, topic=topic, partition=partition, timestamp_ms=now_ms(), key=key, value=event_json(**fields)
    )


def keyed_event(**fields: Any) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """An input (key, value, headers) as a client sends it: keyed by its user, no headers."""
    doc = event_doc(**fields)
    return str(doc["user_id"]).encode(), orjson.dumps(doc), []


# -- component settings with the schema's defaults (components keep no defaults of their own)


def parse_rules(**changes: Any) -> ParseRules:
    """The shipped topology's parse rules, but for ``changes``."""
    return dataclasses.replace(wiring.parse_rules(_shipped()), **changes)


def lane_spec(lane_id: str, **changes: Any) -> LaneSpec:
    """A lane with the schema's defaults, but for ``changes``."""
    return dataclasses.replace(_lane(lane_id, wiring.lane_specs), **changes)


def guarded_lane(lane_id: str, **changes: Any) -> GuardedLane:
    """A lane as the lane guard sees it, with the schema's defaults but for ``changes``."""
    return dataclasses.replace(_lane(lane_id, wiring.guarded_lanes), **changes)


def _lane(lane_id: str, mapped: Callable[[Topology], list[Any]]) -> Any:
    return mapped(_shipped().model_copy(update={"lanes": [Lane(id=lane_id)]}))[0]


@functools.cache
def _shipped() -> Topology:
    return load_topology(SHIPPED_TOPOLOGY)
