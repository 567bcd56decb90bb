"""Lanes and adaptive batching on the real stack: requests carry their lane's Triton
priority and the model accepts it, outputs name their lane, and the adaptive controller
moves its knobs while nothing is lost."""

from __future__ import annotations

import logging

import orjson
import pytest

from pipeline.kafka_io import ensure_topics
from pipeline.testing.builders import keyed_event
from tests.integration.harness import RawIn, fresh_topology, read_values, run_until_accounted

pytestmark = pytest.mark.integration


def numbered(i: int, kind: str = "view") -> RawIn:
    """Input ``i``: its event id is ``l-{i}``, of one of 97 users."""
    return keyed_event(event_id=f"l-{i}", user_id=i % 97, item_id=i % 500, type=kind)


def purchases_and_views(count: int, purchase_every: int) -> list[RawIn]:
    """Purchases and views from different users, so both lanes get requests (a purchase
    would lift a user's whole request into the purchases lane)."""
    records: list[RawIn] = []
    for i in range(count):
        is_purchase = i % purchase_every == 0
        kind, user = ("purchase", 1000 + i % 10) if is_purchase else ("view", i % 97)
        records.append(keyed_event(event_id=f"p-{i}", user_id=user, item_id=i % 500, type=kind))
    return records


async def test_outputs_carry_their_lane_and_triton_accepts_lane_priorities(stack) -> None:
    base = fresh_topology(stack)
    data = base.model_dump(mode="json")
    data["lanes"] = [
        {
            "id": "purchases",
            "match": {"field": "type", "values": ["purchase"]},
            "weight": 4,
            "max_wait_ms": 20,
            "max_in_flight": 2,
            "triton_priority": 1,
        },
        {"id": "rest", "weight": 1, "max_in_flight": 2, "triton_priority": 3},
    ]
    topology = type(base).model_validate(data)
    records = [numbered(i, "purchase" if i % 10 == 0 else "view") for i in range(600)]
    run = await run_until_accounted(topology, records)
    summary = run.ledger.summary()
    assert summary["lost"] == 0 and summary["dead_letters"] == 0

    outputs = [orjson.loads(r.value) for r in await read_values(topology, topology.sink.topic)]
    by_id = {f"l-{i}": ("purchase" if i % 10 == 0 else "view") for i in range(600)}
    lanes = {doc["lane"] for doc in outputs}
    assert lanes == {"purchases", "rest"}
    for doc in outputs:
        kinds = {by_id[s["event_id"]] for s in doc["sources"]}
        assert doc["lane"] == ("purchases" if "purchase" in kinds else "rest")


async def test_adaptive_controller_runs_on_the_real_stack(stack) -> None:
    topology = fresh_topology(stack, adaptive={"enabled": True, "interval_ms": 100, "target_p99_ms": 50})
    await ensure_topics(topology.broker, topology.source.topics, 4)
    records = [numbered(i) for i in range(3000)]
    run = await run_until_accounted(topology, records)
    assert run.ledger.summary()["lost"] == 0
    assert run.runtime is not None and run.runtime.control.controller is not None
    exposition = run.runtime.metrics.exposition().decode()
    assert 'pipeline_adaptive_knob{knob="batch_size"}' in exposition
    assert "pipeline_batch_latency_seconds_count" in exposition
    assert "request_queue_size 0.0" in exposition  # the lane queues are empty once drained


async def test_lane_guard_rations_the_lower_lane_and_loses_nothing(stack, caplog) -> None:
    """A bound the protected lane cannot meet (1 ms) holds the lane below it at its floor
    while both have work; its batches wait for tokens (the dispatcher's timer brings them
    out) and every event is still answered."""
    base = fresh_topology(stack, adaptive={"interval_ms": 100})
    data = base.model_dump(mode="json")
    data["lanes"] = [
        {
            "id": "purchases",
            "match": {"field": "type", "values": ["purchase"]},
            "p99_bound_ms": 1,
        },
        {"id": "rest", "min_rate": 400, "rate_step": 100},
    ]
    topology = type(base).model_validate(data)
    records = purchases_and_views(1500, purchase_every=10)
    caplog.set_level(logging.INFO, logger="pipeline.control_loops")
    run = await run_until_accounted(topology, records)
    summary = run.ledger.summary()
    assert summary["lost"] == 0 and summary["dead_letters"] == 0
    runtime = run.runtime
    assert runtime is not None and runtime.control.guard.active
    assert runtime.control.lanes.lanes["rest"].dispatched > 0
    assert runtime.control.lanes.lanes["purchases"].dispatched > 0
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lane guard:")]
    assert any("purchases over its bound" in m and "'rest': 400.0" in m for m in steps), steps
    exposition = runtime.metrics.exposition().decode()
    assert 'pipeline_lane_rate_limit_rows_per_second{lane="rest"}' in exposition


async def test_a_lane_can_keep_its_own_stale_policy(stack) -> None:
    """A budget of 1 ms makes every event stale before dispatch. The purchases lane follows
    the pipeline's policy and dead-letters them; the rest lane (a backfill, say) says
    best_effort and infers them anyway."""
    base = fresh_topology(stack, deadline={"end_to_end_ms": 1, "stale_policy": "dead_letter"})
    data = base.model_dump(mode="json")
    data["lanes"] = [
        {"id": "purchases", "match": {"field": "type", "values": ["purchase"]}},
        {"id": "rest", "stale_policy": "best_effort"},
    ]
    topology = type(base).model_validate(data)
    records = purchases_and_views(400, purchase_every=4)
    run = await run_until_accounted(topology, records)
    summary = run.ledger.summary()
    assert summary["lost"] == 0
    assert summary["dead_letters"] == 100  # every purchase, and nothing else
    assert set(summary["dead_letter_reasons"]) == {"deadline_exceeded"}
    outputs = [orjson.loads(r.value) for r in await read_values(topology, topology.sink.topic)]
    assert {doc["lane"] for doc in outputs} == {"rest"}
    assert sum(len(doc["sources"]) for doc in outputs) == 300
