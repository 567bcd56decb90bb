"""Whether recommendations were good, read from the topics: each recommendation joined with
what its user did next, counted per model version.

A recommendation is "shown" at its newest input: the last of the events it answered, by
event time (then offset), in the user's own sequence. Its outcome is the user's next
interactions within ``attribution_ms`` of event time after it:

- **next item**: the first of them. A hit@K when that item is among the K recommended, at
  its rank (1-based); judged only when the user came back within the window;
- **any hit**: some interaction within the window named a recommended item;
- **no return**: nothing within the window (counted, not judged).

Event time, not the time the output was written, so the same input replayed gives the same
outcomes whatever the speed. The user's sequence is the input topic's, ordered by
(timestamp, offset) within the user's partition, as the pipeline's histories are. The
in-stream join (Prometheus counters, the guard) must agree with this oracle."""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline import ids
from pipeline.events import RawRecord
from pipeline.state.quality import interaction

Coord = tuple[str, int, int]


@dataclass
class Tally:
    """One group's (a model version's) outcomes."""

    shown: int = 0
    judged: int = 0  # a next interaction within the window
    censored: int = 0  # not judged: the window reaches past the newest input read
    next_hits: int = 0
    any_hits: int = 0
    positions: Counter[int] = field(default_factory=Counter)  # rank of each next-item hit
    items: set[int] = field(default_factory=set)  # distinct items recommended

    @property
    def hit_rate(self) -> float:
        return self.next_hits / self.judged if self.judged else 0.0

    def summary(self, z: float = 1.96) -> dict[str, object]:
        low, high = wilson(self.next_hits, self.judged, z)
        return {
            "shown": self.shown,
            "judged": self.judged,
            "no_return": self.shown - self.judged - self.censored,
            "censored": self.censored,
            "next_item_hits": self.next_hits,
            "hit_rate": round(self.hit_rate, 4),
            "hit_rate_95": [round(low, 4), round(high, 4)],
            "any_hit_rate": round(self.any_hits / self.judged, 4) if self.judged else 0.0,
            "mean_rank_of_hits": (
                round(sum(r * n for r, n in self.positions.items()) / self.next_hits, 2)
                if self.next_hits
                else None
            ),
            "distinct_items": len(self.items),
        }


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (right near 0 and 1, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def version_of(rec: dict[str, Any]) -> str:
    """A recommendation's group: its model version (and experiment arm, ``arm/name:version``),
    and its ``origin`` when not live (a
    backfill's recommendations are made with histories the user has lived past since: not
    mixed with the live ones). The report sets ``origin`` from the record's header."""
    model = rec.get("model") or {}
    origin = rec.get("origin")
    version = f"{model.get('name', '?')}:{model.get('version', '?')}"
    if arm := model.get("arm"):  # an experiment's: per arm and version
        version = f"{arm}/{version}"
    return f"{version}/{origin}" if origin and origin != "live" else version


Step = tuple[int, int, int, int]  # (ts, topic-partition number, offset, item): a user's input


class OutcomeBooks:
    """What the join needs, kept compact as the topics are read: a step per distinct input
    event (a backfill's copy of a live event, same ``event_id``, is one), and per distinct
    recommendation (at-least-once: a duplicate is one) its group, answered inputs and items."""

    def __init__(self, group_of: Callable[[dict[str, Any]], str] = version_of) -> None:
        self.group_of = group_of
        self._sequences: dict[int, list[Step]] = {}  # user → steps
        self._where: dict[Coord, tuple[int, Step]] = {}  # an input → (user, step)
        self._tps: dict[tuple[str, int], int] = {}  # topic-partition → its number
        self._events: dict[int, tuple[int, Step]] = {}  # an event id's hash → its first input
        self._recs: set[int] = set()
        self._shown: list[tuple[str, list[Coord], list[int]]] = []
        self.truncated = 0  # recommendations whose listed sources are not all of them
        self.last_ts = -(2**62)  # the newest input read: windows past it are censored

    def add_input(self, record: RawRecord) -> None:
        doc = interaction(record)
        if doc is None:
            return
        coord = (record.topic, record.partition, record.offset)
        event_id = doc.get("event_id")
        if event_id is not None and (first := self._events.get(hash(event_id))) is not None:
            self._where[coord] = first  # a copy: answering it is answering the first
            return
        tp = self._tps.setdefault((record.topic, record.partition), len(self._tps))
        step = (doc["ts"], tp, record.offset, doc["item_id"])
        self._sequences.setdefault(doc["user_id"], []).append(step)
        self._where[coord] = (doc["user_id"], step)
        if event_id is not None:
            self._events[hash(event_id)] = (doc["user_id"], step)
        self.last_ts = max(self.last_ts, doc["ts"])

    def add_recommendation(self, rec: dict[str, Any]) -> None:
        if (event_id := rec.get("event_id")) is not None:
            if (key := hash(event_id)) in self._recs:
                return
            self._recs.add(key)
        sources = [c for s in rec.get("sources", ()) if (c := _coord(s)) is not None]
        if rec.get("source_count", len(sources)) > len(sources):
            self.truncated += 1  # its newest input may be unlisted: where it was shown is unknown
            return
        ranked = [  # the catalogue's ids as the inputs' (a string id's hash: pipeline/ids.py)
            item
            for i in rec.get("items", ())
            if isinstance(i, dict) and (item := ids.internal_or_none(i.get("item_id"))) is not None
        ]
        self._shown.append((self.group_of(rec), sources, ranked))

    def tallies(self, attribution_ms: int) -> dict[str, Tally]:
        """Each recommendation's outcome, counted by group (the model version and lane)."""
        for sequence in self._sequences.values():
            sequence.sort()
        tallies: dict[str, Tally] = {}
        for group, sources, ranked in self._shown:
            answered = [self._where[c] for c in sources if c in self._where]
            if not answered:
                continue  # its inputs are not in the range read
            user, shown = max(answered, key=lambda a: a[1])
            tally = tallies.setdefault(group, Tally())
            tally.shown += 1
            tally.items.update(ranked)
            within = _within(self._sequences[user], shown, attribution_ms)
            first = next(within, None)
            if first is None:
                tally.censored += shown[0] + attribution_ms > self.last_ts
                continue
            tally.judged += 1
            if first in ranked:
                tally.next_hits += 1
                tally.positions[ranked.index(first) + 1] += 1
            wanted = set(ranked)
            tally.any_hits += first in wanted or any(item in wanted for item in within)
        return tallies


def _within(sequence: list[Step], shown: Step, attribution_ms: int) -> Iterator[int]:
    """The items the user interacted with after ``shown`` and within the window, in order:
    a later time, or the same time after it in its own topic-partition (the order of two
    topics' records at one millisecond is unknown: neither comes after)."""
    ts, tp, offset, _ = shown
    same_ms = bisect.bisect_left(sequence, (ts,))
    later = bisect.bisect_right(sequence, (ts, math.inf))
    for _, other_tp, other_offset, item in sequence[same_ms:later]:
        if other_tp == tp and other_offset > offset:
            yield item
    end = bisect.bisect_right(sequence, (ts + attribution_ms, math.inf), lo=later)
    for i in range(later, end):
        yield sequence[i][3]


def outcomes(
    inputs: Iterable[RawRecord],
    recommendations: Iterable[dict[str, Any]],
    attribution_ms: int,
    group_of: Callable[[dict[str, Any]], str] = version_of,
) -> dict[str, Tally]:
    """Each recommendation's outcome, counted by ``group_of`` (the model version)."""
    books = OutcomeBooks(group_of)
    for record in inputs:
        books.add_input(record)
    for rec in recommendations:
        books.add_recommendation(rec)
    return books.tallies(attribution_ms)


def _coord(source: dict[str, Any]) -> Coord | None:
    try:
        return (str(source["topic"]), int(source["partition"]), int(source["offset"]))
    except (KeyError, TypeError, ValueError):
        return None
