"""Accounting: is every input event accounted for, exactly once?

Input events are identified by their Kafka coordinates (topic, partition, offset), which
every recommendation lists in ``sources`` and every dead letter carries in its headers, so
malformed events count as well as valid ones. A recommendation lists at most
``MAX_LISTED_SOURCES`` inputs and counts them all (``source_count``): the unlisted ones are
accounted for by user, so their duplicates cannot be told.

The topics are read as a stream; what is held is a few dozen bytes per input event of the
audited time range (docs/reliability.md: The audit).

On a running pipeline the newest inputs are not answered yet: with an ``InFlight`` bound, an
unanswered input is in flight, not lost, while it is younger than the bound and its
partition's committed offset (the pipeline's consumer group) has not passed it. The group
commits an offset only once everything before it is answered, so an input it passed with no
answer is lost however young. That assumes the group runs: when the broker lists no member
of it (nothing consumes the topics), the summary says so beside ``in_flight``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from array import array
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from pipeline import ids, kafka_clients
from pipeline.events import Headers
from pipeline.kafka_clients import consumer as kafka_consumer
from pipeline.kafka_io import read_to_end
from pipeline.topology.schema import Topology

log = logging.getLogger(__name__)

Coord = tuple[str, int, int]
COMMITTED_TIMEOUT_S = 10.0  # for the group's coordinator to answer one partition's offset


def dead_letter_source(headers: list[tuple[str, bytes]] | Headers) -> Coord:
    h = {k: v for k, v in headers}
    return (
        h["dlq.source_topic"].decode(),
        int(h["dlq.source_partition"]),
        int(h["dlq.source_offset"]),
    )


def _covered_by_unlisted(budget: Counter[int], user: int | None) -> bool:
    """Whether an unanswered input of ``user`` is one that a recommendation of that user
    counted without listing it; if so it uses up one of the user's unlisted count."""
    if user is None or budget[user] <= 0:
        return False
    budget[user] -= 1
    return True


@dataclass
class Ledger:
    inputs: dict[Coord, int] = field(default_factory=dict)  # coord → produce timestamp
    outputs: Counter[Coord] = field(default_factory=Counter)
    input_users: dict[Coord, int] = field(default_factory=dict)  # only where the caller knew it
    unlisted: Counter[int] = field(default_factory=Counter)  # user → inputs answered, not listed
    recommendations: int = 0
    dead_letters: int = 0
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    last_output_ms: int = 0
    _pending_latency: list[tuple[Coord, int]] = field(default_factory=list)

    def add_input(self, coord: Coord, timestamp_ms: int, user_id: int | None = None) -> None:
        self.inputs[coord] = timestamp_ms
        if user_id is not None:
            self.input_users[coord] = user_id

    def add_recommendation(self, value: bytes, timestamp_ms: int) -> None:
        self.recommendations += 1
        self.last_output_ms = max(self.last_output_ms, timestamp_ms)
        doc = orjson.loads(value)
        sources = doc["sources"]
        first = False
        for src in sources:
            coord = (src["topic"], src["partition"], src["offset"])
            self.outputs[coord] += 1
            first = first or self.outputs[coord] == 1
            self._pending_latency.append((coord, timestamp_ms))
        unlisted = int(doc.get("source_count", len(sources))) - len(sources)
        if unlisted > 0 and first:  # a replayed copy does not vouch twice
            self.unlisted[ids.internal_id(doc["user_id"])] += unlisted

    def add_dead_letter(self, headers: list[tuple[str, bytes]], timestamp_ms: int) -> None:
        self.dead_letters += 1
        self.last_output_ms = max(self.last_output_ms, timestamp_ms)
        coord = dead_letter_source(headers)
        self.outputs[coord] += 1
        self.dead_letter_reasons[dict(headers).get("dlq.reason", b"?").decode()] += 1

    def missing(self) -> list[Coord]:
        """Inputs with no output: neither listed by one nor covered by a user's unlisted count."""
        missing = [c for c in self.inputs if not self.outputs[c]]
        if not self.unlisted or not missing:
            return missing
        budget = Counter(self.unlisted)
        return [c for c in missing if not _covered_by_unlisted(budget, self.input_users.get(c))]

    def accounted(self) -> int:
        return len(self.inputs) - len(self.missing())

    def take_latencies(self) -> list[float]:
        """Latencies of the outputs seen since the last call whose input is known (the rest
        wait for their input's acknowledgement), also kept for the summary."""
        taken, waiting = [], []
        for coord, ts in self._pending_latency:
            if coord in self.inputs:
                taken.append(float(ts - self.inputs[coord]))
            else:
                waiting.append((coord, ts))
        self._pending_latency = waiting
        self.latencies_ms.extend(taken)
        return taken

    def unanswered(self, older_than_ms: int) -> int:
        """Inputs produced before ``older_than_ms`` (epoch ms) with no output yet."""
        return sum(1 for c, ts in self.inputs.items() if ts < older_than_ms and not self.outputs[c])

    def summary(self) -> dict[str, object]:
        self.take_latencies()
        self._pending_latency.clear()
        missing = self.missing()
        lost = len(missing)
        duplicates = sum(n - 1 for c, n in self.outputs.items() if n > 1 and c in self.inputs)
        first_in = min(self.inputs.values(), default=0)
        span_s = max(1e-3, (self.last_output_ms - first_in) / 1000.0)
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "events_in": len(self.inputs),
            "recommendations": self.recommendations,
            "dead_letters": self.dead_letters,
            "lost": lost,
            "lost_examples": [f"{t}[{p}]@{o}" for t, p, o in sorted(missing)[:5]],
            "duplicates": duplicates,
            "answered_unlisted": sum(self.unlisted.values()),
            "dead_letter_reasons": dict(self.dead_letter_reasons),
            "throughput_eps": round(len(self.inputs) / span_s, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
        }


def combined_summary(ledgers: list[Ledger]) -> dict[str, object]:
    """One summary over ledgers of separate broker epochs: offsets restart with a fresh
    broker, so each epoch's coordinates are kept apart by its index."""
    if len(ledgers) == 1:
        return ledgers[0].summary()
    merged = Ledger()
    for i, ledger in enumerate(ledgers):
        ledger.take_latencies()
        merged.inputs.update({(f"{i}/{t}", p, o): ts for (t, p, o), ts in ledger.inputs.items()})
        merged.outputs.update({(f"{i}/{t}", p, o): n for (t, p, o), n in ledger.outputs.items()})
        merged.input_users.update({(f"{i}/{t}", p, o): u for (t, p, o), u in ledger.input_users.items()})
        merged.unlisted.update(ledger.unlisted)
        merged.recommendations += ledger.recommendations
        merged.dead_letters += ledger.dead_letters
        merged.dead_letter_reasons.update(ledger.dead_letter_reasons)
        merged.latencies_ms.extend(ledger.latencies_ms)
        merged.last_output_ms = max(merged.last_output_ms, ledger.last_output_ms)
    return merged.summary()


@dataclass(frozen=True)
class TimeRange:
    """Inputs produced in [since_ms, until_ms) are audited; None: unbounded."""

    since_ms: int | None = None
    until_ms: int | None = None

    def holds(self, timestamp_ms: int) -> bool:
        return (self.since_ms is None or timestamp_ms >= self.since_ms) and (
            self.until_ms is None or timestamp_ms < self.until_ms
        )


@dataclass(frozen=True)
class InFlight:
    """What an unanswered input may be without being lost: younger than ``bound_ms`` at
    ``now_ms`` and at or past its partition's ``committed`` offset (absent: none committed)."""

    now_ms: int
    bound_ms: int
    committed: dict[tuple[str, int], int] = field(default_factory=dict)

    def holds(self, topic: str, partition: int, offset: int, timestamp_ms: int) -> bool:
        return (
            self.bound_ms > 0
            and timestamp_ms > self.now_ms - self.bound_ms
            and offset >= self.committed.get((topic, partition), 0)
        )


class _PartitionBooks:
    """One partition's audited inputs as flat arrays (offsets ascending, as they are read):
    33 bytes an input instead of ~475 in dicts of tuples."""

    def __init__(self) -> None:
        self.offsets = array("q")
        self.users = array("q")  # -1: not an event
        self.timestamps = array("q")
        self.answers = bytearray()  # outputs naming each input, saturating at 255

    def add(self, offset: int, user: int | None, timestamp_ms: int) -> None:
        if self.offsets and offset <= self.offsets[-1]:
            return  # read again (a reader that stepped back): already counted
        self.offsets.append(offset)
        self.users.append(-1 if user is None else user)
        self.timestamps.append(timestamp_ms)
        self.answers.append(0)

    def answer(self, offset: int) -> bool:
        """Counts an output of ``offset``; True when it is an audited input's first."""
        i = bisect_left(self.offsets, offset)
        if i == len(self.offsets) or self.offsets[i] != offset:
            return False  # an input outside the audited range
        self.answers[i] = min(255, self.answers[i] + 1)
        return self.answers[i] == 1


@dataclass
class AuditBooks:
    """The audit's books: inputs first (a partition in offset order), then the outputs; only
    outputs of audited inputs are kept, so memory follows the audited range."""

    partitions: dict[tuple[str, int], _PartitionBooks] = field(default_factory=dict)
    recommendations: int = 0
    dead_letters: int = 0
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    unlisted: Counter[int] = field(default_factory=Counter)

    def add_input(
        self, topic: str, partition: int, offset: int, user: int | None, timestamp_ms: int = 0
    ) -> None:
        self.partitions.setdefault((topic, partition), _PartitionBooks()).add(offset, user, timestamp_ms)

    def _answer(self, coord: Coord) -> bool:
        books = self.partitions.get((coord[0], coord[1]))
        return books is not None and books.answer(coord[2])

    def add_recommendation(self, value: bytes) -> None:
        self.recommendations += 1
        doc = orjson.loads(value)
        sources = doc["sources"]
        first = [self._answer((src["topic"], src["partition"], src["offset"])) for src in sources]
        unlisted = int(doc.get("source_count", len(sources))) - len(sources)
        # Only a first answer to audited inputs vouches for its unlisted ones: a replayed copy
        # (or one answering inputs outside the range) must not cover real losses.
        if unlisted > 0 and any(first):
            self.unlisted[ids.internal_id(doc["user_id"])] += unlisted

    def add_dead_letter(self, headers: Headers) -> None:
        self.dead_letters += 1
        self._answer(dead_letter_source(headers))
        self.dead_letter_reasons[dict(headers).get("dlq.reason", b"?").decode()] += 1

    def summary(self, in_flight: InFlight | None = None) -> dict[str, object]:
        """The books' totals; with ``in_flight``, the unanswered inputs it holds are counted
        as ``in_flight`` instead of lost."""
        budget = Counter(self.unlisted)
        events_in = duplicates = flying = 0
        missing: list[Coord] = []
        for (topic, partition), books in sorted(self.partitions.items()):
            events_in += len(books.offsets)
            rows = zip(books.offsets, books.users, books.timestamps, books.answers, strict=True)
            for offset, user, timestamp_ms, answers in rows:
                if answers > 1:
                    duplicates += answers - 1
                elif answers == 0 and not _covered_by_unlisted(budget, user if user >= 0 else None):
                    if in_flight is not None and in_flight.holds(topic, partition, offset, timestamp_ms):
                        flying += 1
                    else:
                        missing.append((topic, partition, offset))
        in_flight_counts = (
            {} if in_flight is None else {"in_flight": flying, "in_flight_bound_ms": in_flight.bound_ms}
        )
        return {
            "events_in": events_in,
            "recommendations": self.recommendations,
            "dead_letters": self.dead_letters,
            "lost": len(missing),
            **in_flight_counts,
            "lost_examples": [f"{t}[{p}]@{o}" for t, p, o in missing[:5]],
            "duplicates": duplicates,
            "answered_unlisted": sum(self.unlisted.values()) - sum(budget.values()),
            "dead_letter_reasons": dict(self.dead_letter_reasons),
        }


_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_instant(text: str, now_ms: int) -> int:
    """Epoch ms from an ISO 8601 time ("2026-11-27T10:00:00Z") or a duration ago ("90m",
    "2h", "7d")."""
    unit = _UNITS_MS.get(text[-1:])
    if unit is not None and text[:-1].replace(".", "", 1).isdigit():
        return now_ms - int(float(text[:-1]) * unit)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time nor a duration like 90m, 2h, 7d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


# Outputs are written after their inputs; an output stamped this long before the range's
# start still counts (a producer's clock may lag the input's).
OUTPUT_CLOCK_SLACK_MS = 60_000


def input_user(value: bytes | None) -> int | None:
    """The event's user id, when the value is an event (malformed ones are dead-lettered)."""
    try:
        user = orjson.loads(value or b"")["user_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return ids.internal_or_none(user)  # the same id parse gives it (a string's hash)


async def committed_offsets(
    topology: Topology, partitions: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The pipeline's consumer group's committed offsets of ``partitions`` (those it has).
    Asked as a consumer of the group that joins nothing (the embedded broker answers an
    admin client's OffsetFetch in a form aiokafka cannot read)."""
    consumer = kafka_consumer(topology.broker, client_suffix="-audit", group_id=topology.source.group_id)
    try:
        await asyncio.wait_for(consumer.start(), COMMITTED_TIMEOUT_S)
        committed = {}
        for topic, partition in partitions:
            offset = await asyncio.wait_for(
                consumer.committed(TopicPartition(topic, partition)), COMMITTED_TIMEOUT_S
            )
            if offset is not None and offset >= 0:
                committed[(topic, partition)] = int(offset)
        return committed
    finally:
        await consumer.stop()


async def group_members(topology: Topology) -> int | None:
    """How many members the broker lists in the pipeline's consumer group (DescribeGroups);
    None when it does not say within COMMITTED_TIMEOUT_S. A member that left may be listed
    until its session times out (Tansu keeps it): 0 means nothing consumes for sure."""
    admin = kafka_clients.admin(topology.broker)
    try:
        await asyncio.wait_for(admin.start(), COMMITTED_TIMEOUT_S)
        answers = await asyncio.wait_for(
            admin.describe_consumer_groups([topology.source.group_id]), COMMITTED_TIMEOUT_S
        )
        groups = [g for answer in answers for g in answer.groups]
        return sum(len(group[-1]) for group in groups if group[0] == 0)  # (error_code, ..., members)
    except (KafkaError, OSError, TimeoutError):  # the audit goes on without it: the note says unknown
        return None
    except Exception as exc:  # an answer of another shape: unknown too, but said
        log.warning(
            "group %s: its members could not be read from the answer: %r", topology.source.group_id, exc
        )
        return None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def in_flight_note(members: int | None, group_id: str) -> str:
    """What ``in_flight`` rests on: a group that consumes."""
    if members == 0:
        return (
            f"the group {group_id} has no member: nothing consumes the topics, so what is counted "
            "in flight may never be answered (--in-flight-ms 0 counts it lost)"
        )
    if members is None:
        return f"in flight assumes the group {group_id} runs (the broker did not list its members)"
    return f"the group {group_id} has {members} member(s)"


async def audit_topology(
    topology: Topology, window: TimeRange = TimeRange(), in_flight_ms: int = 0
) -> dict[str, object]:
    """Read input, output and dead-letter topics of a topology to their current ends, keeping
    only the inputs produced in ``window`` and the outputs that answer them. ``in_flight_ms``
    (0: none, every unanswered input is lost): how young an unanswered input the pipeline's
    group has not committed past may be, to count as in flight."""
    books = AuditBooks()
    for topic in topology.source.topics:
        async for rec in read_to_end(topology.broker, topic):
            if window.holds(rec.timestamp_ms):
                books.add_input(rec.topic, rec.partition, rec.offset, input_user(rec.value), rec.timestamp_ms)
    committed = {}
    members: int | None = None
    if in_flight_ms > 0:
        # Before the outputs are read: an input committed past from here on was answered
        # before the outputs' read began, so the read finds its answer.
        committed = await committed_offsets(topology, list(books.partitions))
        members = await group_members(topology)
    in_flight = InFlight(time.time_ns() // 1_000_000, in_flight_ms, committed)
    outputs_since = None if window.since_ms is None else window.since_ms - OUTPUT_CLOCK_SLACK_MS
    async for rec in read_to_end(topology.broker, topology.sink.topic):
        if outputs_since is None or rec.timestamp_ms >= outputs_since:
            books.add_recommendation(rec.value or b"")
    async for rec in read_to_end(topology.broker, topology.sink.dead_letter_topic):
        if outputs_since is None or rec.timestamp_ms >= outputs_since:
            books.add_dead_letter(rec.headers)
    summary = books.summary(in_flight)
    if in_flight_ms > 0:
        summary["group_members"] = members
        if summary["in_flight"]:
            summary["in_flight_note"] = in_flight_note(members, topology.source.group_id)
    return summary
