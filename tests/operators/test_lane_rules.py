"""Lane rules: LaneRule matching and the lane classifier; batching per lane."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import reactivex
from reactivex.subject import Subject

from pipeline.control.lane_rules import LaneRule, lane_classifier
from pipeline.events import Event, UserRequest, Window
from pipeline.operators.batch import batch, split_batches
from pipeline.testing.builders import event, user_request

_offsets = itertools.count()


def ev(type_: str = "view", **fields: Any) -> Event:
    """An event of ``type_`` at the next offset (``fields``: as for ``builders.event``)."""
    return event(next(_offsets), type=type_, **fields)


PURCHASES = LaneRule("purchases", 1, field="type", values=frozenset({"purchase"}))
CLICKS = LaneRule("clicks", 2, field="type", values=frozenset({"click"}))
DEFAULT = LaneRule("default", 3)
RULES = [PURCHASES, CLICKS, DEFAULT]


# -- LaneRule ------------------------------------------------------------------------------


@pytest.mark.parametrize(("type_", "matches"), [("purchase", True), ("view", False), ("click", False)])
def test_field_rule(type_, matches):
    assert PURCHASES.matches(ev(type_)) is matches


def test_field_rule_on_a_non_string_attribute_compares_its_text():
    rule = LaneRule("vip", field="user_id", values=frozenset({"42"}))
    assert rule.matches(ev(user=42))
    assert not rule.matches(ev(user=7))


def test_field_rule_on_a_missing_attribute_does_not_match():
    rule = LaneRule("x", field="no_such_field", values=frozenset({"purchase"}))
    assert not rule.matches(ev("purchase"))


def test_header_rule():
    rule = LaneRule("vip", header="tier", values=frozenset({"gold", "platinum"}))
    assert rule.matches(ev(headers=(("tier", b"gold"),)))
    assert rule.matches(ev(headers=(("trace", b"x"), ("tier", b"platinum"))))
    assert not rule.matches(ev(headers=(("tier", b"bronze"),)))
    assert not rule.matches(ev(headers=(("other", b"gold"),)))
    assert not rule.matches(ev())  # no headers at all
    assert not rule.matches(ev(headers=(("tier", b"\xff\xfe"),)))  # undecodable: no match, no error


def test_topic_rule():
    rule = LaneRule("replay", topics=frozenset({"backfill", "replay"}))
    assert rule.matches(ev(topic="backfill"))
    assert rule.matches(ev(topic="replay"))
    assert not rule.matches(ev(topic="interactions"))


def test_combined_conditions_must_all_hold():
    rule = LaneRule(
        "live-gold-purchases",
        topics=frozenset({"live"}),
        field="type",
        header="tier",
        values=frozenset({"purchase", "gold"}),
    )
    gold = (("tier", b"gold"),)
    assert rule.matches(ev("purchase", topic="live", headers=gold))
    assert not rule.matches(ev("purchase", topic="backfill", headers=gold))  # wrong topic
    assert not rule.matches(ev("view", topic="live", headers=gold))  # wrong type
    assert not rule.matches(ev("purchase", topic="live"))  # header missing
    assert not rule.matches(ev("purchase", topic="live", headers=(("tier", b"silver"),)))


def test_topic_and_field():
    rule = LaneRule("x", topics=frozenset({"live"}), field="type", values=frozenset({"click"}))
    assert rule.matches(ev("click", topic="live"))
    assert not rule.matches(ev("click", topic="other"))
    assert not rule.matches(ev("view", topic="live"))


def test_a_rule_without_conditions_is_a_catch_all():
    assert DEFAULT.catch_all
    assert not PURCHASES.catch_all
    assert not LaneRule("t", topics=frozenset({"a"})).catch_all
    assert not LaneRule("h", header="x").catch_all
    assert DEFAULT.matches(ev("anything", topic="anywhere"))


# -- lane_classifier -----------------------------------------------------------------------


def test_first_matching_lane_wins_and_any_event_lifts_the_whole_request():
    classify = lane_classifier(RULES)
    assert classify(user_request(ev("view"), ev("purchase"))) == ("purchases", 1)
    assert classify(user_request(ev("click"), ev("purchase"), ev("view"))) == ("purchases", 1)
    assert classify(user_request(ev("view"), ev("click"))) == ("clicks", 2)
    assert classify(user_request(ev("click"))) == ("clicks", 2)


def test_rule_order_not_event_order_decides():
    classify = lane_classifier([CLICKS, PURCHASES, DEFAULT])
    assert classify(user_request(ev("purchase"), ev("click"))) == ("clicks", 2)


def test_no_match_falls_back_to_the_last_lane():
    classify = lane_classifier(RULES)
    assert classify(user_request(ev("view"))) == ("default", 3)
    assert classify(user_request(ev("view"), ev("view"))) == ("default", 3)


def test_the_last_lane_is_the_fallback_even_with_a_condition_of_its_own():
    bulk = LaneRule("bulk", 0, topics=frozenset({"backfill"}))
    classify = lane_classifier([PURCHASES, bulk])
    assert classify(user_request(ev("view", topic="interactions"))) == ("bulk", 0)
    assert classify(user_request(ev("purchase", topic="backfill"))) == ("purchases", 1)


def test_single_lane_fast_path_sends_everything_there():
    classify = lane_classifier([PURCHASES])  # its own condition does not matter: it is the fallback
    assert classify(user_request(ev("view"))) == ("purchases", 1)
    assert classify(user_request(ev("purchase"))) == ("purchases", 1)


def test_at_least_one_rule():
    with pytest.raises(ValueError, match="at least one lane"):
        lane_classifier([])


# -- batching per lane ---------------------------------------------------------------------

WINDOW = Window((), 5_000, 5_020)


def test_split_batches_groups_per_lane_with_the_lanes_priority_and_max_size():
    classify = lane_classifier(RULES)
    requests = [
        user_request(ev("view"), user=1),
        user_request(ev("purchase"), user=2),
        user_request(ev("view"), user=3),
        user_request(ev("view"), ev("purchase"), user=4),
        user_request(ev("click"), user=5),
        user_request(ev("view"), user=6),
        user_request(ev("purchase"), user=7),
        user_request(ev("view"), user=8),
    ]
    batches = split_batches(WINDOW, requests, 2, classify)
    summary = [(b.lane, b.priority, [r.user_id for r in b.requests]) for b in batches]
    assert summary == [
        ("default", 3, [1, 3]),
        ("default", 3, [6, 8]),
        ("purchases", 1, [2, 4]),
        ("purchases", 1, [7]),
        ("clicks", 2, [5]),
    ]
    assert all((b.window_start_ms, b.window_end_ms) == (5_000, 5_020) for b in batches)
    assert sorted(r.user_id for b in batches for r in b.requests) == list(range(1, 9))


def test_split_batches_max_size_applies_to_each_lane_separately():
    classify = lane_classifier(RULES)
    purchases = [user_request(ev("purchase"), user=u) for u in range(5)]
    views = [user_request(ev("view"), user=u) for u in range(5, 8)]
    requests = purchases + views
    batches = split_batches(WINDOW, requests, 3, classify)
    assert [(b.lane, len(b.requests)) for b in batches] == [
        ("purchases", 3),
        ("purchases", 2),
        ("default", 3),
    ]
    assert all(len({r.user_id for r in b.requests}) == len(b.requests) for b in batches)


def test_batch_operator_tags_lanes():
    out = []
    window = (WINDOW, [user_request(ev("view"), user=1), user_request(ev("purchase"), user=2)])
    reactivex.of(window).pipe(batch(10, lane_classifier(RULES))).subscribe(out.append)
    assert [(b.lane, b.priority, [r.user_id for r in b.requests]) for b in out] == [
        ("default", 3, [1]),
        ("purchases", 1, [2]),
    ]


def test_batch_operator_reads_a_callable_max_size_for_every_window():
    size = [2]
    out, done = [], []
    subject: Subject = Subject()
    subject.pipe(batch(lambda: size[0])).subscribe(out.append, on_completed=lambda: done.append(True))
    users = [user_request(ev("view"), user=u) for u in range(6)]

    subject.on_next((WINDOW, users))
    assert [len(b.requests) for b in out] == [2, 2, 2]

    size[0] = 4  # the controller grew the batch size between windows
    out.clear()
    subject.on_next((WINDOW, users))
    assert [len(b.requests) for b in out] == [4, 2]

    size[0] = 0  # never below one row
    out.clear()
    subject.on_next((WINDOW, users[:3]))
    assert [len(b.requests) for b in out] == [1, 1, 1]

    subject.on_completed()
    assert done == [True]


def test_a_lane_cap_bounds_only_that_lanes_batches() -> None:
    def lane_of(request: UserRequest) -> tuple[str, int]:
        return ("backfill", 3) if request.user_id >= 100 else ("live", 1)

    rows = [user_request(ev(), user=u) for u in range(10)] + [
        user_request(ev(), user=100 + u) for u in range(10)
    ]
    batches = split_batches(Window((), 0, 1), rows, 8, lane_of, {"backfill": 3})
    sizes = {lane: [len(b.requests) for b in batches if b.lane == lane] for lane in ("live", "backfill")}
    assert sizes == {"live": [8, 2], "backfill": [3, 3, 3, 1]}
