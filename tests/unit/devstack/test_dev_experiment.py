"""`pipeline dev --experiment`'s topology and summary (pipeline/devstack/experiment.py)."""

from __future__ import annotations

from collections import Counter

from pipeline.devstack.experiment import MODEL, arms_summary, experiment_topology
from pipeline.quality.arms import Arms
from pipeline.testing import topology


def test_the_experiment_serves_its_own_model_in_two_live_arms_and_a_shadow() -> None:
    t = experiment_topology(topology(model={"version": ""}))
    assert t.model.name == MODEL and t.model.version == ""
    assert t.experiment is not None and not t.experiment.guard.enabled
    arms = Arms(t.experiment)
    assert [(a.id, a.version, a.shadow) for a in arms.info.values()] == [
        ("trained", "1", False),
        ("popularity", "2", False),
        ("random", "3", True),
    ]
    routed = Counter(arms.route(u) for u in range(2_000))  # the generator's users
    assert set(routed) == {"trained", "popularity"} and abs(routed["trained"] - 1_000) < 100


def test_the_summary_gives_each_arms_hit_rate_with_its_interval() -> None:
    summary = arms_summary(
        {
            ("trained", "1"): Counter(hit=500, miss=400, no_return=3),
            ("trained", "4"): Counter(hit=40, miss=60),  # a second version of the arm: added up
            ("random", "3"): Counter(miss=10),
        }
    )
    assert summary["trained"]["hit_rate"] == 0.54 and summary["trained"]["judged"] == 1_000
    assert summary["trained"]["versions"] == ["1", "4"]
    low, high = summary["trained"]["hit_rate_95"]  # type: ignore[misc]
    assert 0.50 < low < 0.54 < high < 0.58
    assert summary["random"] == {
        "versions": ["3"],
        "judged": 10,
        "hits": 0,
        "no_return": 0,
        "hit_rate": 0.0,
        "hit_rate_95": [0.0, 0.2775],
        "shadow": True,
    }
