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
        self._next: dict[tuple[str, int], int] = {}

    def add(
        self, user: int, item: int, ts: int, topic: str = TOPIC, event_id: str | None = None
    ) -> tuple[str, int, int]:
        partition = user % 2
        offset = self._next.get((topic, partition), 0)
        self._next[(topic, partition)] = offset + 1
        doc = {"user_id": user, "item_id": item, "ts": ts, "event_type": "view"}
        value = orjson.dumps(doc | ({"event_id": event_id} if event_id else {}))
        self.records.append(RawRecord(topic, partition, offset, ts, str(user).encode(), value, []))
        return (topic, partition, offset)


def rec(
    sources: list[tuple[str, int, int]], items: list[int], version: str = "1", **fields: Any
) -> dict[str, Any]:
    return fields | {
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


def test_a_recommendation_with_unlisted_sources_is_not_judged() -> None:
    """Only the first 100 sources are listed: its newest input may be among the others, which
    would then pass for the user's next interactions (history the model was sent: misses)."""
    log = Inputs()
    listed = [log.add(1, i, ts=i) for i in range(3)]
    log.add(1, 50, ts=10)
    tallies = outcomes(log.records, [rec(listed, [50], source_count=150)], MINUTE)
    assert tallies == {}


def test_a_backfill_copy_of_an_event_and_a_duplicate_output_count_once() -> None:
    """The same event_id in the live and the backfill topic is one interaction (not its own
    next item); an output delivered twice (at least once) is one recommendation."""
    log = Inputs()
    shown = log.add(1, 5, ts=1_000, event_id="e1")
    log.add(1, 5, ts=1_000, topic="interactions.backfill", event_id="e1")
    log.add(1, 7, ts=2_000, event_id="e2")
    twice = rec([shown], [7, 8], event_id="r1")
    tally = outcomes(log.records, [twice, twice], MINUTE)["recommender:1"]
    assert (tally.shown, tally.judged, tally.next_hits) == (1, 1, 1)


def test_at_the_same_millisecond_only_a_later_offset_of_the_same_partition_comes_after() -> None:
    log = Inputs()
    shown = log.add(1, 1, ts=1_000)
    log.add(1, 2, ts=1_000, topic="other")  # another topic, same ms: order unknown, not after
    log.add(1, 3, ts=1_000)  # same partition, later offset: after
    tally = outcomes(log.records, [rec([shown], [3])], MINUTE)["recommender:1"]
    assert (tally.judged, tally.next_hits, tally.positions) == (1, 1, {1: 1})


def test_the_window_holds_its_last_millisecond_and_counts_any_hit_after_the_next() -> None:
    log = Inputs()
    shown = log.add(1, 1, ts=0)
    log.add(1, 2, ts=10)  # next: a miss
    log.add(1, 3, ts=MINUTE)  # the window's last millisecond: a hit within it
    tally = outcomes(log.records, [rec([shown], [3, 4])], MINUTE)["recommender:1"]
    assert (tally.judged, tally.next_hits, tally.any_hits) == (1, 0, 1)


def test_a_window_reaching_past_the_newest_input_read_is_censored_not_a_user_gone() -> None:
    log = Inputs()
    old = log.add(1, 1, ts=0)
    log.add(3, 1, ts=2 * MINUTE)  # the newest input read
    recent = log.add(5, 1, ts=2 * MINUTE - 10)
    tally = outcomes(log.records, [rec([old], [2]), rec([recent], [2])], MINUTE)["recommender:1"]
    summary = tally.summary()
    assert (summary["no_return"], summary["censored"], summary["judged"]) == (1, 1, 0)


def test_recommendations_from_a_backfill_are_counted_apart() -> None:
    log = Inputs()
    a = log.add(1, 1, ts=0)
    log.add(1, 2, ts=5)
    tallies = outcomes(log.records, [rec([a], [2]), rec([a], [9], origin="backfill")], MINUTE)
    assert tallies["recommender:1"].next_hits == 1 and tallies["recommender:1/backfill"].next_hits == 0
