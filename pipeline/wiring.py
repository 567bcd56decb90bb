"""Wiring: the topology → each component's configuration. Pure functions, no I/O: the
runtime calls them and reads as the dataflow. The runtime reads no topology key itself;
``ends.py`` hands the Kafka and Triton clients their sections, and the commands beside the
service (dev, audit, replay, redrive) read what they need. A new key of the running
pipeline is mapped here (see README, "Adding a topology key")."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

from pipeline.control.adaptive import AdaptiveBounds, Knobs
from pipeline.control.breaker import CircuitBreaker
from pipeline.control.budget import RetryBudget
from pipeline.control.dead_letter_budget import DeadLetterBudget
from pipeline.control.lane_guard import GuardedLane
from pipeline.control.lane_rules import LaneRule
from pipeline.control.lanes import LaneSpec
from pipeline.control.retry import RetryPolicy
from pipeline.operators.enrich import OutputSpec
from pipeline.operators.parse import ParseRules
from pipeline.sources.credits import TopicCredits
from pipeline.sources.partitions import COMMIT_TIMEOUT_S
from pipeline.state.users import StateSettings
from pipeline.topology.schema import Tls, Topology
from pipeline.tracing import Tracing, from_spec
from pipeline.triton.codec import ModelSignature
from pipeline.triton.contract import BatchBound
from pipeline.triton.dispatcher import DispatchConfig


class RuntimeSettings(NamedTuple):
    """What the runtime itself needs to know of the topology."""

    name: str
    dead_letter_topic: str
    drain_timeout_s: float
    stall_after_s: float
    commit_interval_s: float
    liveness_stuck_after_s: float  # a loop with no round (the consumer no poll) this long: dead
    commit_timeout_s: float  # a commit round's bound, inside liveness' (a broker away: no restart)


def runtime_settings(t: Topology) -> RuntimeSettings:
    return RuntimeSettings(
        t.name,
        t.sink.dead_letter_topic,
        t.source.drain_timeout_ms / 1000.0,
        t.source.stall_after_ms / 1000.0,
        t.source.commit_interval_ms / 1000.0,
        t.operations.liveness_stuck_after_ms / 1000.0,
        min(COMMIT_TIMEOUT_S, t.operations.liveness_stuck_after_ms / 3000.0),
    )


class Endpoint(NamedTuple):
    port: int
    bind: str


def operations_endpoint(t: Topology) -> Endpoint | None:
    """Where /metrics and the probes (/livez, /startupz, /readyz) are served (None: not served)."""
    ops = t.operations
    return Endpoint(ops.metrics_port, ops.bind) if ops.metrics_port else None


def topic_credits(t: Topology, hold: Callable[[], bool]) -> TopicCredits:
    credits = t.source.credits
    return TopicCredits(
        t.source.topics,
        credits.high_watermark,
        credits.low_watermark,
        hold=hold,
        high_watermark_bytes=credits.high_watermark_bytes,
        low_watermark_bytes=credits.low_watermark_bytes,
    )


def fixed_knobs(t: Topology) -> Knobs:
    """Batch size, window and in flight while the adaptive controller is off."""
    return Knobs(t.batch.max_size, t.window.max_ms, t.model.max_in_flight)


def control_interval_s(t: Topology) -> float:
    return t.adaptive.interval_ms / 1000.0


def window_max_events(t: Topology) -> int:
    return t.window.max_events


def state_settings(t: Topology) -> StateSettings:
    """Where users' histories live and how they are restored (state.dir unset: memory)."""
    w, s = t.window, t.state
    return StateSettings(
        s.dir,
        w.history_length,
        w.history_order == "event_time",
        int(w.history_cache_mb * (1 << 20)),
        w.remembered_users,
        s.restore_stall_ms / 1000.0,
        s.restore_attempts,
    )


def parse_rules(t: Topology) -> ParseRules:
    return ParseRules(
        t.source.max_event_bytes,
        t.validation.max_future_skew_ms,
        t.validation.max_age_ms,
        t.validation.require_key,
        t.window.max_lateness_ms if t.window.late_policy == "dead_letter" else None,
        t.validation.age_reference,
        key_is_user=t.state.dir is not None,
    )


def tracing(t: Topology, provider: Any = None) -> Tracing | None:
    """Spans per output (operations.tracing); the extra missing: a Fatal error at start."""
    return from_spec(t.operations.tracing, provider)


def output_spec(t: Topology, tracing: Tracing | None = None) -> OutputSpec:
    experiment = t.experiment.id if t.experiment is not None else None
    return OutputSpec(
        t.sink.topic, t.sink.dead_letter_topic, frozenset(t.sink.carry_headers), tracing, experiment
    )


def sink_lanes(t: Topology) -> list[str]:
    """Lanes that get a producer of their own (one lane: the default producer only)."""
    return [lane.id for lane in t.lanes] if len(t.lanes) > 1 else []


class ModelCheck(NamedTuple):
    """What the start checks the served model against."""

    url: str
    tls: Tls | None
    signature: ModelSignature
    largest: BatchBound


def model_check(t: Topology) -> ModelCheck:
    return ModelCheck(t.model.url, t.model.tls, model_signature(t), largest_batch(t))


def arm_model_checks(t: Topology) -> list[tuple[str, ModelCheck]]:
    """Each experiment arm's version, checked as the model is (the key that names it first)."""
    if t.experiment is None:
        return []
    check = model_check(t)
    return [
        (
            f"experiment.arms[{i}] ({arm.id})",
            check._replace(signature=dataclasses.replace(check.signature, version=v)),
        )
        for i, (arm, v) in enumerate((arm, arm.version) for arm in t.experiment.arms)
    ]


def shadow_priority(t: Topology) -> int:
    """A shadow arm's Triton priority: the lowest any lane uses (behind live requests)."""
    return max(lane.triton_priority for lane in t.lanes)


class OutcomeSettings(NamedTuple):
    attribution_ms: int
    remembered_users: int
    examples_topic: str | None
    max_bytes: int
    durable: bool  # waiting recommendations kept in the durable user state (when there is one)


def outcome_settings(t: Topology) -> OutcomeSettings | None:
    o = t.outcomes
    if not o.enabled:
        return None
    return OutcomeSettings(
        o.attribution_ms, o.remembered_users, o.examples_topic, int(o.memory_mb * (1 << 20)), o.durable
    )


def model_signature(t: Topology) -> ModelSignature:
    return ModelSignature(t.model.name, t.model.version, t.window.history_length, t.model.top_k)


def dispatch_config(t: Topology) -> DispatchConfig:
    model, retry = t.model, t.model.retry
    return DispatchConfig(
        model_signature(t),
        max_in_flight=max(model.max_in_flight, t.adaptive.max_in_flight),
        timeout_ms=model.timeout_ms,
        retry=RetryPolicy(retry.max_attempts, retry.backoff_ms, retry.max_backoff_ms),
        end_to_end_ms=t.deadline.end_to_end_ms,
        drop_stale=t.deadline.stale_policy == "dead_letter",
        max_split_requests=model.max_split_requests,
        lane_drop_stale={
            lane.id: lane.stale_policy == "dead_letter" for lane in t.lanes if lane.stale_policy is not None
        },
    )


def circuit_breaker(t: Topology) -> CircuitBreaker:
    cb = t.model.circuit_breaker
    return CircuitBreaker(cb.failure_threshold, cb.open_ms, cb.max_open_ms)


def retry_budget(t: Topology) -> RetryBudget:
    return RetryBudget(t.model.retry.budget_ratio, t.model.retry.budget_min_per_s)


def dead_letter_budget(t: Topology) -> DeadLetterBudget | None:
    b = t.dead_letter_budget
    if not b.enabled:
        return None
    return DeadLetterBudget(
        b.max_share, b.window_ms / 1000.0, b.min_events, b.hold_ms / 1000.0, b.max_hold_ms / 1000.0
    )


def lane_specs(t: Topology) -> list[LaneSpec]:
    return [
        LaneSpec(lane.id, lane.weight, lane.max_wait_ms, lane.max_in_flight, lane.triton_priority)
        for lane in t.lanes
    ]


def guarded_lanes(t: Topology) -> list[GuardedLane]:
    return [GuardedLane(lane.id, lane.p99_bound_ms, lane.min_rate, lane.rate_step) for lane in t.lanes]


def lane_rules(t: Topology) -> list[LaneRule]:
    """Which lane a request goes to: first match wins, a lane without ``match`` takes the rest."""
    return [
        LaneRule(lane.id, lane.triton_priority)
        if lane.match is None
        else LaneRule(
            lane.id,
            lane.triton_priority,
            lane.match.field,
            lane.match.header,
            frozenset(lane.match.topics),
            frozenset(lane.match.values),
        )
        for lane in t.lanes
    ]


def lane_batch_caps(t: Topology) -> dict[str, int]:
    return {lane.id: lane.max_batch for lane in t.lanes if lane.max_batch is not None}


def adaptive_bounds(t: Topology) -> AdaptiveBounds | None:
    a = t.adaptive
    if not a.enabled:
        return None
    return AdaptiveBounds(
        a.target_p99_ms,
        a.min_batch,
        a.max_batch,
        a.min_in_flight,
        a.max_in_flight,
        a.min_window_ms,
        a.max_window_ms,
    )


def largest_batch(t: Topology) -> BatchBound:
    """The largest batch the topology can send, and the key that sets it (model contract)."""
    if t.adaptive.enabled:
        return BatchBound("adaptive.max_batch", t.adaptive.max_batch)
    return BatchBound("batch.max_size", t.batch.max_size)
