"""The in-stream join (pipeline/quality/online.py) against the offline report
(pipeline/quality/outcomes.py, the oracle): whatever comes first, a user's next window or
the answer to the last, the same recommendations are judged hits and misses, and the same
any-hits. Users come back to items they saw before."""

from __future__ import annotations

import random

import orjson
import pytest

from pipeline.events import RawRecord, Recommendations, UserRequest, Window
from pipeline.metrics import Metrics
from pipeline.quality.online import OnlineOutcomes
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

    record = example_record("examples", 5, "treatment", _Shown(100, (1, 2, 3), "2"), "hit", 200, 2, "exp")
    doc = orjson.loads(record.value)
    assert (record.topic, record.key, doc["rank"], doc["recommendation"]["arm"]) == (
        "examples",
        b"5",
        2,
        "treatment",
    )
    assert from_events([doc]).summary()["interactions"] == 1  # user 5 took item 2 at 200
