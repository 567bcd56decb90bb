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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.events import RawRecord
from pipeline.state.quality import interaction

Coord = tuple[str, int, int]


@dataclass
class Tally:
    """One group's (a model version's) outcomes."""

    shown: int = 0
    judged: int = 0  # a next interaction within the window
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
            "no_return": self.shown - self.judged,
            "next_item_hits": self.next_hits,
            "hit_rate": round(self.hit_rate, 4),
            "hit_rate_95": [round(low, 4), round(high, 4)],
            "any_hit_rate": round(self.any_hits / self.shown, 4) if self.shown else 0.0,
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
    model = rec.get("model") or {}
    return f"{model.get('name', '?')}:{model.get('version', '?')}"


class OutcomeBooks:
    """What the join needs, kept compact as the topics are read: (ts, offset, item) per user
    input, (group, answered inputs, ranked items) per recommendation."""

    def __init__(self, group_of: Callable[[dict[str, Any]], str] = version_of) -> None:
        self.group_of = group_of
        self._sequences: dict[int, list[tuple[int, int, int]]] = {}  # user → (ts, offset, item)
        self._where: dict[Coord, tuple[int, int, int]] = {}  # an input → (user, ts, offset)
        self._shown: list[tuple[str, list[Coord], list[int]]] = []

    def add_input(self, record: RawRecord) -> None:
        doc = interaction(record)
        if doc is None:
            return
        user, ts = doc["user_id"], doc["ts"]
        self._sequences.setdefault(user, []).append((ts, record.offset, doc["item_id"]))
        self._where[(record.topic, record.partition, record.offset)] = (user, ts, record.offset)

    def add_recommendation(self, rec: dict[str, Any]) -> None:
        sources = [c for s in rec.get("sources", ()) if (c := _coord(s)) is not None]
        ranked = [i["item_id"] for i in rec.get("items", ()) if isinstance(i, dict) and "item_id" in i]
        self._shown.append((self.group_of(rec), sources, ranked))

    def tallies(self, attribution_ms: int) -> dict[str, Tally]:
        """Each recommendation's outcome, counted by group (the model version)."""
        for sequence in self._sequences.values():
            sequence.sort()
        tallies: dict[str, Tally] = {}
        for group, sources, ranked in self._shown:
            answered = [self._where[c] for c in sources if c in self._where]
            if not answered:
                continue  # its inputs are not in the range read
            user, ts, offset = max(answered, key=lambda a: (a[1], a[2]))
            tally = tallies.setdefault(group, Tally())
            tally.shown += 1
            tally.items.update(ranked)
            sequence = self._sequences[user]
            after = bisect.bisect_right(sequence, (ts, offset, math.inf))
            end = bisect.bisect_right(sequence, (ts + attribution_ms, math.inf, math.inf), lo=after)
            within = [item for _, _, item in sequence[after:end]]
            if not within:
                continue
            tally.judged += 1
            if within[0] in ranked:
                tally.next_hits += 1
                tally.positions[ranked.index(within[0]) + 1] += 1
            if set(within) & set(ranked):
                tally.any_hits += 1
        return tallies


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
