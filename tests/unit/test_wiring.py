"""Wiring: the shipped topologies mapped onto the components' configurations."""

from __future__ import annotations

from pathlib import Path

from pipeline import wiring
from pipeline.topology.loader import load_topology

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
LIVE_AND_BACKFILL = load_topology(TOPOLOGIES / "live_and_backfill.yaml", env={})
LIVE = load_topology(TOPOLOGIES / "recommendations.yaml", env={})


def test_lanes_map_to_rules_specs_guards_and_caps_in_order() -> None:
    t = LIVE_AND_BACKFILL
    rules = wiring.lane_rules(t)
    assert [r.lane for r in rules] == ["purchases", "live", "backfill"]
    assert rules[0].field == "type" and rules[0].values == frozenset({"purchase"})
    assert rules[1].topics == frozenset({"interactions"})
    assert rules[2].field is None and not rules[2].topics  # the last lane takes the rest
    assert [(s.id, s.weight, s.priority) for s in wiring.lane_specs(t)] == [
        ("purchases", 4, 1),
        ("live", 2, 2),
        ("backfill", 1, 3),
    ]
    assert {g.id: g.p99_bound_ms for g in wiring.guarded_lanes(t)} == {
        "purchases": 100,
        "live": 200,
        "backfill": None,
    }
    assert wiring.lane_batch_caps(t) == {"backfill": 32}
    assert wiring.sink_lanes(t) == ["purchases", "live", "backfill"]
    one_lane = LIVE.model_copy(update={"lanes": LIVE.lanes[:1]})
    assert wiring.sink_lanes(one_lane) == []  # one lane: the default producer only


def test_a_lane_overrides_the_stale_policy_and_in_flight_covers_the_adaptive_bound() -> None:
    t = LIVE_AND_BACKFILL
    config = wiring.dispatch_config(t)
    assert config.drops_stale("purchases") == (t.deadline.stale_policy == "dead_letter")
    assert not config.drops_stale("backfill")  # best_effort in that lane
    assert config.max_in_flight == max(t.model.max_in_flight, t.adaptive.max_in_flight)
    assert config.signature.history_length == t.window.history_length


def test_the_largest_batch_names_the_key_that_sets_it() -> None:
    assert wiring.largest_batch(LIVE_AND_BACKFILL).key == "adaptive.max_batch"
    assert wiring.adaptive_bounds(LIVE_AND_BACKFILL) is not None
    if not LIVE.adaptive.enabled:
        assert wiring.largest_batch(LIVE).key == "batch.max_size"
        assert wiring.adaptive_bounds(LIVE) is None


def test_late_events_are_parse_rules_only_when_the_policy_dead_letters_them() -> None:
    rules = wiring.parse_rules(LIVE)
    expected = LIVE.window.max_lateness_ms if LIVE.window.late_policy == "dead_letter" else None
    assert rules.max_lateness_ms == expected
    assert rules.max_event_bytes == LIVE.source.max_event_bytes
