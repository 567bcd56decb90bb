"""The in-stream join (pipeline/quality/online.py) against the offline report
(pipeline/quality/outcomes.py, the oracle): whatever comes first, a user's next window or
the answer to the last, the same recommendations are judged hits and misses, and the same
any-hits. Users come back to items they saw before."""

from __future__ import annotations

import random
import tracemalloc
from array import array

import orjson
import pytest

from pipeline.events import RawRecord, Recommendations, UserRequest, Window
from pipeline.metrics import Metrics
from pipeline.quality.online import SHOWN_BYTES, USER_BYTES, OnlineOutcomes
from pipeline.quality.outcomes import outcomes
from pipeline.testing.builders import event

ATTRIBUTION_MS = 60_000


def scenario(seed: int) -> tuple[list[list[tuple[int, int, int, int]]], dict[int, list[int]]]:
    """Windows of (user, item, ts, offset) and, per offset, the items recommended for the
    row that event ends."""
    rng = random.Random(seed)
    windows: list[list[tuple[int, int, int, int]]] = []
    recs: dict[int, list[int]] = {}
    clock = {u: 1_000_000 + rng.randrange(10_000) for u in range(12)}
    offset = 0
    for _ in range(40):
        window = []
        for user in rng.sample(range(12), rng.randrange(1, 6)):
            clock[user] += rng.choice((1_000, 5_000, 30_000, 90_000))  # some past the window
            item = user * 1_000 + rng.randrange(12)  # a dozen items a user: many repeats
            window.append((user, item, clock[user], offset))
            recs[offset] = rng.sample([user * 1_000 + k for k in range(12)], 4)
            offset += 1
        windows.append(window)
    return windows, recs


@pytest.mark.parametrize("seed", range(25))
def test_the_stream_judges_as_the_report_does_whatever_arrives_first(seed: int) -> None:
    windows, recs = scenario(seed)
    rng = random.Random(seed + 1000)
    metrics = Metrics()
    join = OnlineOutcomes(ATTRIBUTION_MS, 1_000, metrics)
    records: list[RawRecord] = []
    docs = []
    waiting: list[tuple[int, list[tuple[UserRequest, Recommendations]]]] = []  # (due window, answers)
    for w, window in enumerate(windows):
        events = [event(off, user=u, item=i, ts=ts) for u, i, ts, off in window]
        join.seen(Window(tuple(events), 0, 0))
        for e in events:
            doc = {"user_id": e.user_id, "item_id": e.item_id, "ts": e.ts, "event_id": f"e{e.source.offset}"}
            records.append(RawRecord("t", 0, e.source.offset, e.ts, None, orjson.dumps(doc), ()))
        answers = [
            (UserRequest(e.user_id, (), (e,)), Recommendations(tuple(recs[e.source.offset]), ()))
            for e in events
        ]
        waiting.append((w + rng.randrange(0, 4), answers))  # answered up to 3 windows later
        for _due, answered in [x for x in waiting if x[0] <= w]:
            join.shown("a", "1", answered)
            for row, r in answered:
                src = row.events[0].source
                docs.append(
                    {
                        "model": {"name": "m", "version": "1"},
                        "items": [{"item_id": i} for i in r.item_ids],
                        "sources": [{"topic": "t", "partition": 0, "offset": src.offset}],
                    }
                )
        waiting = [x for x in waiting if x[0] > w]
    tally = outcomes(records, docs, ATTRIBUTION_MS)["m:1"]
    counted = join.counts()[("a", "1")]
    assert (counted["hit"], counted["hit"] + counted["miss"]) == (tally.next_hits, tally.judged)
    assert tally.judged > 20  # something to agree on
    any_hits = metrics.registry.get_sample_value(
        "pipeline_outcome_any_hits_total", {"arm": "a", "version": "1"}
    )
    assert any_hits == tally.any_hits


def test_a_joined_example_is_an_interaction_the_trainer_reads() -> None:
    from pipeline.quality.online import _Shown, example_record
    from pipeline.recsys.data import from_events

    rec = _Shown(100, array("q", (1, 2, 3)), "treatment", "2")
    record = example_record("examples", 5, rec, "hit", 200, 2, "exp")
    doc = orjson.loads(record.value)
    assert (record.topic, record.key, doc["rank"], doc["recommendation"]["arm"]) == (
        "examples",
        b"5",
        2,
        "treatment",
    )
    assert from_events([doc]).summary()["interactions"] == 1  # user 5 took item 2 at 200


def filled(join: OnlineOutcomes, users: range, items: int = 10) -> None:
    """Each user a window and an answer nobody comes back to: a recommendation waiting."""
    for user in users:
        e = event(user, user=user, item=user, ts=1_000 + user)
        join.seen(Window((e,), 0, 0))
        join.shown("a", "1", [(UserRequest(user, (), (e,)), Recommendations(tuple(range(items)), ()))])


def test_the_bytes_estimate_errs_high_and_the_bound_holds() -> None:
    join = OnlineOutcomes(ATTRIBUTION_MS, 1_000_000, Metrics(), max_bytes=1 << 30)
    filled(join, range(100))  # warm: metric children, first allocations
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    estimate_before = join.bytes
    filled(join, range(100, 5_100))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert join.pending == 5_100
    assert used <= join.bytes - estimate_before < 2 * used

    metrics = Metrics()
    bounded = OnlineOutcomes(ATTRIBUTION_MS, 1_000_000, metrics, max_bytes=100_000)
    filled(bounded, range(5_000))
    assert bounded.bytes <= 100_000 and bounded.pending < 5_000
    dropped = metrics.registry.get_sample_value("pipeline_outcomes_dropped_total")
    assert dropped == 5_000 - bounded.pending  # each forgotten one counted


def test_users_with_nothing_open_are_let_go() -> None:
    join = OnlineOutcomes(ATTRIBUTION_MS, 1_000, Metrics())
    filled(join, range(10))
    e = event(99, user=3, item=5, ts=1_000_000)  # user 3 back, past the window: no_return
    join.seen(Window((e,), 0, 0))
    join.shown("a", "1", [(UserRequest(3, (), (e,)), Recommendations((5,), ()))])
    later = event(100, user=3, item=5, ts=1_000_001)  # the new one judged a hit: nothing open
    join.seen(Window((later,), 0, 0))
    join.shown("a", "1", [(UserRequest(3, (), (later,)), Recommendations((7,), ()))])
    counts = join.counts()[("a", "1")]
    assert (counts["no_return"], counts["hit"]) == (1, 1)
    assert join.pending == 9 + 1  # nine never came back; user 3's last one waits
    waiting_bytes = join.bytes
    assert waiting_bytes == 10 * USER_BYTES + sum(SHOWN_BYTES + 8 * n for n in [10] * 9 + [1])
