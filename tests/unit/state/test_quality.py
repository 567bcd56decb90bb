"""The history measures read from topics: a recommendation naming an item the user saw
before it counts, one naming an item seen only later does not; a changelog whose last
record lags the inputs is named."""

from __future__ import annotations

from pipeline.operators.coalesce import pack_pairs
from pipeline.state.histories import user_key
from pipeline.state.quality import changelog_mismatches, history_share
from pipeline.testing.builders import input_record, raw_record


def rec(user: int, offset: int, items: list[int], topic: str = "interactions") -> dict:
    return {
        "user_id": user,
        "sources": [{"event_id": f"e{offset}", "topic": topic, "partition": 0, "offset": offset}],
        "items": [{"item_id": i} for i in items],
    }


def inputs() -> list:
    events = [(7, 1, 100), (7, 2, 200), (8, 1, 150), (7, 3, 300)]  # (user, item, ts)
    return [
        input_record(user_id=u, item_id=i, ts=ts)._replace(offset=n) for n, (u, i, ts) in enumerate(events)
    ]


def test_only_items_seen_up_to_the_answered_input_count() -> None:
    recs = [
        rec(7, 1, [1, 9]),  # item 1 seen at offset 0: names history
        rec(7, 0, [3, 9]),  # item 3 seen only later (offset 3): not history then
        rec(8, 2, [2, 4]),  # user 8 saw item 1 only
        rec(7, 3, [5], topic="other"),  # answers an input of another topic: not matched
    ]
    measure = history_share(inputs(), recs, 16, group_of=lambda r: r["user_id"])
    assert (measure.naming, measure.answered) == (1, 3)
    assert measure.by_group == {"7": (1, 2), "8": (0, 1)}


def test_a_changelog_behind_the_inputs_is_named() -> None:
    changelog = [
        raw_record(0, key=user_key(7), value=pack_pairs([(100, 1), (200, 2)])),  # lacks item 3
        raw_record(1, key=user_key(8), value=pack_pairs([(150, 1)])),
    ]
    assert changelog_mismatches(inputs(), changelog, 16) == [7]
    fixed = [*changelog, raw_record(2, key=user_key(7), value=pack_pairs([(100, 1), (200, 2), (300, 3)]))]
    assert changelog_mismatches(inputs(), fixed, 16) == []
