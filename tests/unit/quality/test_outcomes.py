"""Recommendations joined with what their users did next, from topic records
(pipeline/quality/outcomes.py): the next item and its rank, any hit within the window, the
users who did not come back, by model version; event time, so arrival order and speed do
not change the answer; the Wilson interval."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from pipeline.events import RawRecord
from pipeline.quality.outcomes import outcomes, wilson

TOPIC = "interactions"
MINUTE = 60_000


class Inputs:
    """An input topic: each user on partition user % 2, offsets in order of adding."""

    def __init__(self) -> None:
        self.records: list[RawRecord] = []
        self._next: dict[int, int] = {}

    def add(self, user: int, item: int, ts: int) -> tuple[str, int, int]:
        partition = user % 2
        offset = self._next.get(partition, 0)
        self._next[partition] = offset + 1
        value = orjson.dumps({"user_id": user, "item_id": item, "ts": ts, "event_type": "view"})
        self.records.append(RawRecord(TOPIC, partition, offset, ts, str(user).encode(), value, []))
        return (TOPIC, partition, offset)


def rec(sources: list[tuple[str, int, int]], items: list[int], version: str = "1") -> dict[str, Any]:
    return {
        "model": {"name": "recommender", "version": version},
        "items": [{"item_id": i, "score": 1.0 / (r + 1)} for r, i in enumerate(items)],
        "sources": [{"topic": t, "partition": p, "offset": o} for t, p, o in sources],
    }


def test_the_next_item_is_a_hit_at_its_rank_and_any_later_one_counts_as_any_hit() -> None:
    log = Inputs()
    first = log.add(1, 10, ts=1_000)
    log.add(1, 30, ts=2_000)  # the next item: recommended, rank 3
    log.add(1, 99, ts=3_000)
    second = log.add(3, 10, ts=1_000)
    log.add(3, 55, ts=2_000)  # next: not recommended
    log.add(3, 40, ts=4_000)  # but a later one within the window is
    tallies = outcomes(log.records, [rec([first], [20, 25, 30]), rec([second], [40, 41])], MINUTE)
    tally = tallies["recommender:1"]
    assert (tally.shown, tally.judged, tally.next_hits, tally.any_hits) == (2, 2, 1, 2)
    assert tally.positions == {3: 1}
    assert tally.items == {20, 25, 30, 40, 41}


def test_a_user_who_does_not_come_back_within_the_window_is_not_judged() -> None:
    log = Inputs()
    shown = log.add(5, 1, ts=0)
    log.add(5, 2, ts=MINUTE + 1)  # past the window: the recommendation is not its cause
    tally = outcomes(log.records, [rec([shown], [2])], MINUTE)["recommender:1"]
    assert (tally.shown, tally.judged, tally.next_hits, tally.any_hits) == (1, 0, 0, 0)
    assert tally.summary()["no_return"] == 1


def test_a_coalesced_recommendation_is_shown_at_its_newest_input_by_event_time() -> None:
    """Sources out of order in offsets (a producer's timestamps): the newest by event time is
    where the user was when it was shown; what came before it is no outcome."""
    log = Inputs()
    late_offset = log.add(7, 1, ts=5_000)
    early_offset = log.add(7, 2, ts=6_000)
    log.add(7, 3, ts=4_000)  # written after, stamped before the recommendation: history
    log.add(7, 4, ts=7_000)  # the next item
    tally = outcomes(log.records, [rec([early_offset, late_offset], [3, 4])], MINUTE)["recommender:1"]
    assert (tally.judged, tally.next_hits, tally.positions) == (1, 1, {2: 1})


def test_versions_are_counted_apart_and_unknown_sources_skipped() -> None:
    log = Inputs()
    a = log.add(1, 1, ts=0)
    log.add(1, 2, ts=10)
    b = log.add(3, 1, ts=0)
    log.add(3, 9, ts=10)
    recs = [rec([a], [2], "1"), rec([b], [2], "2"), rec([("elsewhere", 0, 0)], [2], "2")]
    tallies = outcomes(log.records, recs, MINUTE)
    assert tallies["recommender:1"].next_hits == 1 and tallies["recommender:2"].next_hits == 0
    assert tallies["recommender:2"].shown == 1  # the one whose inputs were not read: skipped


def test_the_same_input_in_any_arrival_order_gives_the_same_outcomes() -> None:
    """Replayed at another speed, or read back partition by partition in another order: the
    outcome is a function of the events' times, not of when anything arrived."""
    rng = random.Random(7)
    log = Inputs()
    recs = []
    for step in range(400):
        user = rng.randrange(20)
        coord = log.add(user, rng.randrange(30), ts=step * 1_000 + rng.randrange(500))
        recs.append(rec([coord], rng.sample(range(30), 5), str(user % 2)))
    expected = {k: v.summary() for k, v in outcomes(log.records, recs, 20_000).items()}
    for _ in range(5):
        shuffled_inputs, shuffled_recs = log.records[:], recs[:]
        rng.shuffle(shuffled_inputs)
        rng.shuffle(shuffled_recs)
        got = {k: v.summary() for k, v in outcomes(shuffled_inputs, shuffled_recs, 20_000).items()}
        assert got == expected
    assert sum(s["judged"] for s in expected.values()) > 200  # the check has something to check


@pytest.mark.parametrize(("hits", "n"), [(0, 10), (5, 10), (10, 10), (30, 1000), (1, 1)])
def test_the_wilson_interval_holds_the_rate_within_0_and_1(hits: int, n: int) -> None:
    low, high = wilson(hits, n)
    assert 0.0 <= low <= hits / n <= high <= 1.0
    assert high - low < 1.0


def test_the_wilson_interval_narrows_with_more_outcomes_and_matches_a_known_value() -> None:
    low, high = wilson(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)  # the textbook 95 % interval
    assert wilson(500, 1000)[1] - wilson(500, 1000)[0] < high - low
    assert wilson(0, 0) == (0.0, 1.0)  # nothing judged: nothing known
