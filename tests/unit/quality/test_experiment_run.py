"""Experiments on the assembled runtime, in process (the testing kit): sticky arms, every
output naming its arm and version, a shadow scored and never emitted, the in-stream outcome
join agreeing with the offline report, the guard stopping a bad arm, and an arm whose
version disappears falling back to the control. Users follow a simple taste: their next
item is usually the one after their last, which the "following" model predicts and a
hashed (random) one does not."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline import errors
from pipeline.events import RawRecord
from pipeline.quality.outcomes import outcomes
from pipeline.recsys.scoring import HISTORY_PAD
from pipeline.testing import FakeTriton, InProcessRun, running, topology
from pipeline.testing.builders import input_record
from pipeline.topology.schema import Topology
from pipeline.triton.contract import ModelContractError

ITEMS = 1_000
TOP_K = 10
STEP_MS = 10_000  # between a user's events: well inside the 30-minute attribution window


def following_scorer(users: np.ndarray, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The K items after the user's newest: what these users mostly pick next."""
    newest = np.array([row[row != HISTORY_PAD][-1] for row in history], dtype=np.int64)
    ids = (newest[:, None] + np.arange(1, TOP_K + 1)[None, :]) % ITEMS
    scores = np.tile(np.linspace(1.0, 0.1, TOP_K, dtype=np.float32), (len(users), 1))
    return ids.astype(np.int64), scores


def random_scorer(users: np.ndarray, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(int(users.sum()) + history.shape[0])
    ids = np.stack([rng.choice(ITEMS, TOP_K, replace=False) for _ in users]).astype(np.int64)
    return ids, np.tile(np.linspace(1.0, 0.1, TOP_K, dtype=np.float32), (len(users), 1))


def server() -> FakeTriton:
    triton = FakeTriton(items=ITEMS, top_k=TOP_K, scorer=following_scorer)
    triton.version_scorers = {"1": following_scorer, "2": random_scorer, "3": following_scorer}
    return triton


def experiment_topology(guard: dict[str, Any] | None = None, shadow: bool = True) -> Topology:
    arms: list[dict[str, Any]] = [
        {"id": "control", "version": "1", "share": 0.5},
        {"id": "treatment", "version": "2", "share": 0.5},
    ]
    if shadow:
        shadow_arm = {"id": "candidate", "version": "3", "shadow": True, "max_rows_per_s": 100_000}
        arms.append(shadow_arm | {"max_in_flight": 64})
    return topology(
        experiment={"id": "exp-1", "arms": arms, "guard": guard or {"enabled": False}},
        window={"max_ms": 5},
    )


class Users:
    """Each user's next item: the one after their last with probability ``follow``, else
    any; one event per user per round, rounds ``STEP_MS`` apart in event time."""

    def __init__(self, count: int, follow: float = 0.7, seed: int = 3) -> None:
        self.rng = random.Random(seed)
        self.follow = follow
        self.last = {u: self.rng.randrange(ITEMS) for u in range(count)}
        self.start_ms = int(time.time() * 1000) - 3_600_000
        self.round = 0

    def next_round(self) -> list[RawRecord]:
        ts = self.start_ms + self.round * STEP_MS
        out = []
        for user, last in self.last.items():
            item = (last + 1) % ITEMS if self.rng.random() < self.follow else self.rng.randrange(ITEMS)
            self.last[user] = item
            doc = {"event_id": f"u{user}-r{self.round}", "user_id": user, "item_id": item, "ts": ts + user}
            out.append(input_record(partition=user % 2, key=str(user).encode(), **doc))
        self.round += 1
        return out


async def play(run: InProcessRun, users: Users, rounds: int) -> None:
    for _ in range(rounds):
        run.source.add(users.next_round())
        await run.settled()


def online(run: InProcessRun) -> dict[str, Counter[str]]:
    """Outcomes counted in the stream, by arm (over its versions)."""
    by_arm: dict[str, Counter[str]] = {}
    assert run.runtime.outcomes is not None
    for (arm, _version), counts in run.runtime.outcomes.counts().items():
        by_arm.setdefault(arm, Counter()).update(counts)
    return by_arm


def metric(run: InProcessRun, name: str, **labels: str) -> float:
    value = run.runtime.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_arms_are_sticky_outputs_name_them_and_the_stream_agrees_with_the_report() -> None:
    users = Users(300)
    async with running(experiment_topology(), triton=server()) as run:
        await play(run, users, 6)
    recs = run.sink.recommendations()
    assert run.lost() == [] and run.sink.dead_letters() == []
    assert len(recs) == 300 * 6  # one event per user and window: one answer each, none for the shadow
    arm_of: dict[int, set[str]] = {}
    for doc in recs:
        model: Any = doc["model"]
        assert model["experiment"] == "exp-1"
        assert (model["arm"], model["version"]) in {("control", "1"), ("treatment", "2")}
        arm_of.setdefault(int(doc["user_id"]), set()).add(model["arm"])
    assert all(len(arms) == 1 for arms in arm_of.values())  # no user seen in two arms
    share = sum(arms == {"treatment"} for arms in arm_of.values()) / len(arm_of)
    assert 0.4 < share < 0.6
    scored = metric(run, "pipeline_shadow_rows_total", arm="candidate", result="scored")
    skipped = metric(run, "pipeline_shadow_rows_total", arm="candidate", result="skipped")
    assert 0.9 * 300 * 6 <= scored <= scored + skipped <= 300 * 6  # the last may be out at the stop

    counted = online(run)
    report = outcomes(
        run.source.logs[("interactions", 0)] + run.source.logs[("interactions", 1)], recs, 1_800_000
    )
    for arm, version in (("control", "1"), ("treatment", "2")):
        tally = report[f"{arm}/recommender:{version}"]
        assert (counted[arm]["hit"], counted[arm]["hit"] + counted[arm]["miss"]) == (
            tally.next_hits,
            tally.judged,
        ), arm
        assert tally.judged >= 0.8 * tally.shown  # five of six rounds have a next event
    rate = {arm: c["hit"] / (c["hit"] + c["miss"]) for arm, c in counted.items()}
    assert rate["control"] > 0.6 > 0.05 > rate["treatment"]
    assert abs(rate["candidate"] - rate["control"]) < 0.1  # the shadow, judged on everyone
    live_judged = sum(counted[arm]["hit"] + counted[arm]["miss"] for arm in ("control", "treatment"))
    assert counted["candidate"]["hit"] + counted["candidate"]["miss"] >= 0.85 * live_judged


async def test_the_guard_stops_a_worse_arm_and_its_users_go_to_the_control() -> None:
    guard = {"min_outcomes": 150, "margin": 0.1, "interval_ms": 20}
    users = Users(300)
    async with running(experiment_topology(guard, shadow=False), triton=server()) as run:
        rounds = 0
        while "treatment" not in run.runtime.arms.stopped:  # type: ignore[union-attr]
            assert rounds < 8, online(run)
            await play(run, users, 1)
            rounds += 1
        stopped_after = sum(online(run)["treatment"][k] for k in ("hit", "miss"))
        before = len(run.sink.recommendations())
        await play(run, users, 2)
    assert run.runtime.arms.stopped == {"treatment": "hit_rate"}  # type: ignore[union-attr]
    assert stopped_after < 150 + 300  # judged within a round of reaching min_outcomes
    assert run.lost() == [] and run.sink.dead_letters() == []
    after = run.sink.recommendations()[before:]
    assert len(after) == 600 and {(d["model"]["arm"], d["model"]["version"]) for d in after} == {  # type: ignore[index]
        ("control", "1")
    }
    assert metric(run, "pipeline_experiment_arm_stops_total", arm="treatment", reason="hit_rate") == 1
    assert metric(run, "pipeline_experiment_arm_serving", arm="treatment", version="2") == 0


async def test_a_version_gone_mid_run_sends_its_arm_to_the_control_without_dead_letters() -> None:
    users = Users(200)
    triton = server()
    async with running(experiment_topology(shadow=False), triton=triton) as run:
        await play(run, users, 1)
        triton.missing_versions.add("2")  # a reload: the first failures go to the control...
        await play(run, users, 1)
        assert run.runtime.arms.stopped == {}  # type: ignore[union-attr]
        while not run.runtime.arms.stopped:  # type: ignore[union-attr]
            await play(run, users, 1)  # ... and five in a row stop the arm
        await play(run, users, 1)
    assert run.runtime.arms.stopped == {"treatment": "version_unavailable"}  # type: ignore[union-attr]
    assert run.lost() == [] and run.sink.dead_letters() == []
    later = run.sink.recommendations()[200:]
    assert {(d["model"]["arm"], d["model"]["version"]) for d in later} == {("control", "1")}  # type: ignore[index]
    assert len(later) == len(run.inputs()) - 200  # every one answered, by the control


async def test_a_failing_treatment_does_not_hold_the_control() -> None:
    """A version that fails (not missing: its process unhealthy) is the treatment's problem:
    its batches go to the control, the breaker stays closed, the arm stops after five in a
    row, and nothing waits or is dead-lettered."""
    users = Users(200)
    triton = server()
    treatment = triton.version_scorers["2"]

    def unhealthy(u: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("not reached")

    async with running(experiment_topology(shadow=False), triton=triton) as run:
        await play(run, users, 1)
        triton.version_scorers["2"] = unhealthy
        triton.failing_versions = {"2": errors.ServerUnavailable("stub process not healthy")}
        started, rounds = time.monotonic(), 0
        while not run.runtime.arms.stopped and rounds < 8:  # type: ignore[union-attr]
            await play(run, users, 1)
            rounds += 1
            assert run.runtime.dispatcher.breaker.is_closed
        took = time.monotonic() - started
    assert run.runtime.arms.stopped == {"treatment": "version_failing"}  # type: ignore[union-attr]
    assert run.lost() == [] and run.sink.dead_letters() == [] and took < 0.5 * rounds
    assert treatment is not unhealthy


async def test_a_version_not_served_at_start_is_one_line_naming_its_arm() -> None:
    triton = server()
    triton.missing_versions.add("2")
    with pytest.raises(
        ModelContractError,
        match=r"^experiment\.arms\[1\] \(treatment\): model\.name: 'recommender' \(version 2\): not found$",
    ):
        async with running(experiment_topology(shadow=False), triton=triton):
            pass


async def test_the_same_input_replayed_at_another_pace_gives_the_same_outcomes() -> None:
    """All of it at once (windows racing their answers), then a round at a time with a slow
    model: the same outcomes, kind by kind, and the same joined examples. One event a window
    (``window.max_events: 1``, as a replay check runs), so that both runs make the same
    recommendations."""
    users = Users(150, seed=11)
    rounds = [users.next_round() for _ in range(8)]
    counts, examples = [], []
    for burst, delay_s in ((True, 0.0), (False, 0.03)):
        triton = server()
        triton.delay_s = delay_s
        t = experiment_topology(shadow=False)
        t = t.model_copy(
            update={
                "window": t.window.model_copy(update={"max_events": 1}),
                "outcomes": t.outcomes.model_copy(update={"examples_topic": "examples"}),
            }
        )
        async with running(t, triton=triton) as run:
            for batch in [[r for b in rounds for r in b]] if burst else rounds:
                run.source.add(batch)
                await run.settled(30)
        counts.append(online(run))
        examples.append([orjson.loads(r.value) for r in run.sink.records if r.topic == "examples"])
    assert counts[0] == counts[1]
    assert sum(counts[0]["control"].values()) > 150 * 7 * 0.4
    kinds = [
        Counter((e["recommendation"]["arm"], e["outcome"]) for e in run_examples) for run_examples in examples
    ]
    assert kinds[0] == kinds[1]
    assert kinds[0] == Counter({(arm, kind): n for arm, c in counts[0].items() for kind, n in c.items()})
    assert sorted(e["event_id"] for e in examples[0]) == sorted(e["event_id"] for e in examples[1])
    assert run.lost() == [] and metric(run, "pipeline_recommendations_total") == 150 * 8


async def test_an_outage_of_every_version_stops_no_arm() -> None:
    """Every request failing together (the server overloaded, a stream broken) is nobody's
    version: the treatment is not stopped, and once the server answers again every event is
    answered by its own arm."""
    users = Users(200)
    triton = server()
    t = experiment_topology(shadow=False)
    t = t.model_copy(update={"batch": t.batch.model_copy(update={"max_size": 4})})  # many requests out
    async with running(t, triton=triton) as run:
        await play(run, users, 1)
        overloaded = errors.ResourceExhausted("queue full")
        triton.failing_versions = {"1": overloaded, "2": overloaded}
        run.source.add(users.next_round())
        await asyncio.sleep(1.0)  # retries, the breaker opening, fallbacks: all failing
        triton.failing_versions = {}
        await run.settled(30)
        await play(run, users, 1)
    assert run.runtime.arms.stopped == {}  # type: ignore[union-attr]
    assert run.lost() == []
    last = run.sink.recommendations()[-200:]
    assert {d["model"]["arm"] for d in last} == {"control", "treatment"}  # type: ignore[index]
