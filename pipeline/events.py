"""Value types that flow through the pipeline. Small, slotted and immutable where they are
created per event (the hot path), plain data everywhere else: no I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

EVENT_TYPES = frozenset({"view", "click", "purchase"})
Headers = tuple[tuple[str, bytes], ...]


class RawRecord(NamedTuple):
    """A consumed Kafka record, as the source hands it on."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    undecodable: str | None = None  # set: the client could not decode this record (why)
    generation: int = 0  # the source's assignment of the partition it was taken in


class Event(NamedTuple):
    """A validated interaction event. Ids are non-negative int64 (pipeline/ids.py): an
    integer id itself, or a string id's stable hash."""

    event_id: str
    user_id: int
    item_id: int
    type: str
    ts: int
    source: RawRecord
    user_text: str | None = None  # the user id as it came, when a string (user_id: its hash)

    @property
    def ref(self) -> tuple[str, int, int]:
        """Where its record came from: (topic, partition, offset)."""
        s = self.source
        return (s.topic, s.partition, s.offset)


@dataclass(frozen=True)
class DeadLetter:
    """An event that cannot become a recommendation, with why."""

    record: RawRecord
    reason: str
    error_class: str
    detail: str
    attempts: int = 0


class UserRequest(NamedTuple):  # built once per row: a tuple is cheaper than a frozen dataclass
    """One user's coalesced events of one window: a single row of an inference batch."""

    user_id: int
    history: tuple[int, ...]  # recent distinct items, newest last
    events: tuple[Event, ...]  # every source event, duplicates included, for lineage and acks
    duplicates: int = 0  # events in ``events`` whose id was already seen in the window


@dataclass(frozen=True)
class Window:
    events: tuple[Event, ...]
    start_ms: int  # wall-clock time the window opened
    end_ms: int  # wall-clock time it closed


@dataclass(frozen=True)
class InferenceBatch:
    requests: tuple[UserRequest, ...]
    window_start_ms: int
    window_end_ms: int
    lane: str = "default"
    priority: int = 0
    arm: str = ""  # the experiment arm its users were routed to ("": no experiment)
    examples: tuple[OutputRecord, ...] = ()  # joined examples its window's events decided

    @property
    def event_count(self) -> int:
        return sum(len(r.events) for r in self.requests)


class Recommendations(NamedTuple):
    """Inference answer for one row."""

    item_ids: tuple[int, ...]  # internal ids (pipeline/ids.py), as the user state holds them
    scores: tuple[float, ...]  # rounded to 6 decimals by the codec
    keys: tuple[int | str, ...] | None = None  # the catalogue's own ids (ITEM_KEYS); None: item_ids


@dataclass
class BatchOutcome:
    """What the dispatcher made of a batch: answers for some rows, failures for others."""

    batch: InferenceBatch
    answers: list[tuple[UserRequest, Recommendations]] = field(default_factory=list)
    failures: list[DeadLetter] = field(default_factory=list)
    model_name: str = ""
    model_version: str = ""
    arm: str = ""  # the experiment arm that answered (the control, if the batch's fell back)
    examples: list[OutputRecord] = field(default_factory=list)  # joined examples its answers decided
    dispatched_ms: float = 0.0
    completed_ms: float = 0.0
    attempts: int = 1
    split_requests: int = 0  # extra requests spent finding the rows the model refused


class OutputRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    sources: tuple[RawRecord, ...] = ()  # the inputs it answers: dead-lettered if it is refused
    trace: object | None = None  # tracing.OpenSpans, ended at the broker's answer (tracing enabled)
    partition: int | None = None  # None: the key's (Kafka's default partitioner); set: the changelog's


@dataclass(frozen=True)
class SinkBatch:
    """Records to write; the source records each names are finished once it is written."""

    records: tuple[OutputRecord, ...]
    recommendations: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    lane: str = ""  # which lane's producer writes it ("": the default one)

    @property
    def sources(self) -> list[RawRecord]:
        """Every input the batch finishes, once each (a record names the inputs it answers)."""
        return [src for rec in self.records for src in rec.sources]
