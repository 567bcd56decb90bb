"""age_reference: replay: a replayed record's age is judged against its own replay's newest
event, so a backfill of years-old history is recommended; other records keep the wall clock."""

from __future__ import annotations

import orjson

from pipeline.operators.parse import REPLAY_RUN_HEADER, ReplayClock, parse_batch
from pipeline.testing.builders import event_doc, parse_rules, raw_record

NOW = 1_800_000_000_000
YEAR_MS = 365 * 24 * 3_600_000
RULES = parse_rules(max_age_ms=YEAR_MS, age_reference="replay")


def record(offset: int, ts: int, run: bytes | None):
    headers = ((REPLAY_RUN_HEADER, run),) if run else ()
    value = orjson.dumps(event_doc(event_id=f"e{offset}", user_id=1, item_id=2, type="view", ts=ts))
    return raw_record(offset, timestamp_ms=NOW, value=value, headers=headers)


def test_years_old_history_of_a_replay_is_accepted() -> None:
    clock = ReplayClock()
    history = [record(i, NOW - 5 * YEAR_MS + i * 86_400_000, b"run-a") for i in range(30)]
    parsed = parse_batch(history, RULES, NOW, clock)
    assert len(parsed.events) == 30 and parsed.rejects == []


def test_an_event_far_older_than_its_replay_is_too_old() -> None:
    clock = ReplayClock()
    parsed = parse_batch(
        [record(0, NOW - 3 * YEAR_MS, b"run-a"), record(1, NOW - 5 * YEAR_MS, b"run-a")], RULES, NOW, clock
    )
    assert len(parsed.events) == 1
    assert [d.reason for d in parsed.rejects] == ["too_old"]
    # another replay has its own reference
    other = parse_batch([record(2, NOW - 5 * YEAR_MS, b"run-b")], RULES, NOW, clock)
    assert len(other.events) == 1


def test_unmarked_records_and_wall_clock_topologies_keep_the_wall_clock() -> None:
    old = NOW - 2 * YEAR_MS
    assert [d.reason for d in parse_batch([record(0, old, None)], RULES, NOW, ReplayClock()).rejects] == [
        "too_old"
    ]
    live = parse_rules(max_age_ms=YEAR_MS)  # age_reference: wall_clock
    assert [d.reason for d in parse_batch([record(1, old, b"run-a")], live, NOW).rejects] == ["too_old"]


def test_the_clock_forgets_old_runs() -> None:
    clock = ReplayClock()
    for run in range(ReplayClock.MAX_RUNS + 10):
        clock.reference_ms(record(run, NOW, str(run).encode()), NOW, NOW)
    assert len(clock.newest) == ReplayClock.MAX_RUNS
