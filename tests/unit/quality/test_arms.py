"""Arms of an experiment (pipeline/quality/arms.py) and their schema: a user's arm is a
sticky hash of the id seeded by the experiment, split by the shares; a stopped arm's users
go to the control and nobody else moves; the guard's rule (pipeline/quality/guard.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.quality.arms import Arms
from pipeline.quality.guard import ArmGuard, worse_by_more_than
from pipeline.testing import topology
from pipeline.topology.schema import Experiment, Guard


def experiment(*shares: float, exp_id: str = "exp", **more: Any) -> Experiment:
    arms = [{"id": f"a{i}", "version": str(i + 1), "share": s} for i, s in enumerate(shares)]
    return Experiment.model_validate({"id": exp_id, "arms": arms, **more})


def test_a_users_arm_is_sticky_and_split_by_the_shares() -> None:
    arms = Arms(experiment(0.2, 0.3, 0.5))
    again = Arms(experiment(0.2, 0.3, 0.5))  # another process, the same experiment
    counts = Counter(arms.route(u) for u in range(100_000))
    assert all(arms.route(u) == again.route(u) for u in range(0, 100_000, 7))
    for arm, share in (("a0", 0.2), ("a1", 0.3), ("a2", 0.5)):
        assert abs(counts[arm] / 100_000 - share) < 0.01
    reshuffled = Arms(experiment(0.2, 0.3, 0.5, exp_id="exp-2"))
    moved = sum(arms.route(u) != reshuffled.route(u) for u in range(10_000))
    assert 5_000 < moved < 7_000  # a new id: independent assignment (1 - Σ share² = 62 % move)


def test_a_window_routed_at_once_agrees_with_one_by_one() -> None:
    arms = Arms(experiment(0.2, 0.3, 0.5))
    users = [*range(5_000), 2**62, 2**63 - 1]
    assert arms.route_many(users) == [arms.route(u) for u in users]
    arms.stop("a2", "hit_rate", "worse")
    assert arms.route_many(users) == [arms.route(u) for u in users]
    assert "a2" not in arms.route_many(users)


def test_a_stopped_arm_hands_its_users_to_the_control_and_no_one_else_moves() -> None:
    arms = Arms(experiment(0.5, 0.25, 0.25))
    before = {u: arms.route(u) for u in range(5_000)}
    assert arms.stop("a1", "hit_rate", "worse") and not arms.stop("a1", "hit_rate", "again")
    assert not arms.stop("a0", "hit_rate", "the control has nothing to fall back to")
    for user, arm in before.items():
        assert arms.route(user) == ("a0" if arm == "a1" else arm)
        assert arms.assigned(user) == arm
    assert arms.serving("a1") == "a0" and arms.serving("a2") == "a2"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arms": [{"id": "a", "version": "1", "share": 0.6}]}, "add up to 0.6, not 1"),
        ({"arms": [{"id": "a", "version": "1", "share": 1}, {"id": "a", "version": "2"}]}, "unique"),
        ({"arms": [{"id": "s", "version": "1", "shadow": True}]}, "needs a live"),
        (
            {
                "arms": [
                    {"id": "a", "version": "1", "share": 1},
                    {"id": "s", "version": "2", "shadow": True, "share": 0.1},
                ]
            },
            "a shadow arm has no share",
        ),
        (
            {
                "control": "s",
                "arms": [
                    {"id": "a", "version": "1", "share": 1},
                    {"id": "s", "version": "2", "shadow": True},
                ],
            },
            "control 's' is not a live arm",
        ),
    ],
)
def test_an_experiment_that_cannot_stand_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Experiment.model_validate({"id": "e", **changes})


def test_versions_live_in_the_arms_not_in_the_model_section() -> None:
    arms = [{"id": "a", "version": "1", "share": 1}]
    with pytest.raises(ValidationError, match="the arms name the versions"):
        topology(model={"version": "2"}, experiment={"id": "e", "arms": arms})


def test_the_difference_must_exceed_the_margin_with_confidence() -> None:
    assert worse_by_more_than((600, 1000), (400, 1000), 0.1, 0.95)[0]  # 0.2 lower, bound ≈ 0.16
    assert not worse_by_more_than((600, 1000), (520, 1000), 0.05, 0.95)[0]  # 0.08 lower, bound ≈ 0.04
    assert not worse_by_more_than((60, 100), (40, 100), 0.1, 0.95)[0]  # 0.2 lower, too few to be sure


def test_the_guard_waits_for_min_outcomes_then_stops_the_worse_arm_only() -> None:
    shadow = {"id": "s", "version": "9", "shadow": True}
    live = [{"id": f"a{i}", "version": str(i + 1), "share": s} for i, s in enumerate((0.4, 0.3, 0.3))]
    arms = Arms(Experiment.model_validate({"id": "exp", "arms": [*live, shadow]}))
    counts: dict[tuple[str, str], Counter[str]] = {
        ("s", "9"): Counter(hit=0, miss=5_000),  # a shadow is judged, never stopped by the guard
        ("a0", "1"): Counter(hit=300, miss=200),
        ("a1", "2"): Counter(hit=100, miss=300),  # far worse, but 400 judged
        ("a2", "3"): Counter(hit=280, miss=220),  # a little worse: within the margin
    }
    latencies = {"a0": [3.0] * 300, "a2": [5.0] * 300}
    guard = ArmGuard(
        Guard(min_outcomes=500, margin=0.05), arms, lambda: counts, lambda a: latencies.get(a, [])
    )
    assert guard.judge() == []
    counts[("a1", "2")] = Counter(hit=130, miss=390)
    assert [(v.arm, v.reason) for v in guard.judge()] == [("a1", "hit_rate")]
    assert arms.stopped == {"a1": "hit_rate"}
    slow = ArmGuard(Guard(p99_bound_ms=4.0), arms, lambda: counts, lambda a: latencies.get(a, []))
    latencies["a0"] = [4.5] * 300  # the control as slow: the server's, nobody's arm
    assert slow.judge() == []
    latencies["a0"] = [3.0] * 300
    latencies["a2"] = [5.0] * 150  # too few to judge
    assert slow.judge() == []
    latencies["a2"] = [5.0] * 300
    assert [(v.arm, v.reason) for v in slow.judge()] == [("a2", "latency")]


def test_a_shadow_is_never_the_control() -> None:
    shadow_first = Experiment.model_validate(
        {
            "id": "e",
            "arms": [
                {"id": "s", "version": "3", "shadow": True},
                {"id": "a", "version": "1", "share": 0.5},
                {"id": "b", "version": "2", "share": 0.5},
            ],
        }
    )
    arms = Arms(shadow_first)
    assert arms.control == "a"
    arms.stop("b", "hit_rate", "worse")
    assert {arms.route(u) for u in range(1_000)} == {"a"}
