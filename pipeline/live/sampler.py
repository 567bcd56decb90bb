"""The live page's memory: one reading of the registry a second, kept as a bounded ring of
points (rates and latency quantiles over the last few seconds) beside the latest state
(lanes, partitions, breaker, restores, experiment arms). One owner, the operations endpoint,
runs it as a supervised loop on the pipeline's own event loop; a reading is the work of a
scrape (1 to 2 ms, more with hundreds of partitions), so the pipeline pays about 0.2 % of a
core for it."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from pipeline.control.breaker import CircuitBreaker
from pipeline.control.lanes import LaneScheduler
from pipeline.live.readings import Buckets, Reading, count, increase, quantile
from pipeline.metrics import Metrics
from pipeline.ticks import every

SAMPLE_INTERVAL_S = 1.0
KEEP_POINTS = 600  # ten minutes at one a second: ~300 KB in memory, ~35 KB of JSON
RATE_WINDOW = 5  # intervals: each point's rates and quantiles are over the 5 s before it
MAX_ROWS = 40  # partitions, restores, lanes, arms listed: the JSON stays small on any assignment

SERIES = (
    "t",  # Unix seconds
    "consumed",  # events/s taken from the input topics
    "recommended",  # recommendations/s written
    "dead_lettered",  # dead letters/s written
    "e2e_p50_ms",
    "e2e_p99_ms",
    "inference_p99_ms",  # one Triton request, send to answer
    "in_flight",  # events consumed and not finished
    "lag",  # records behind the high watermarks, all partitions
)


class Point(NamedTuple):
    t: float
    consumed: float | None
    recommended: float | None
    dead_lettered: float | None
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None
    inference_p99_ms: float | None
    in_flight: float | None
    lag: float | None


class Mark(NamedTuple):
    """What rates and quantiles are taken between: counters and histograms at one moment."""

    t: float
    consumed: float
    recommended: float
    dead_lettered: float
    end_to_end: Buckets
    inference: Buckets
    lanes: dict[str, Buckets]


class RuntimeParts(NamedTuple):
    """What the page shows that has no series in the registry: the breaker's state and each
    lane's in-flight count and budget are read where they are kept."""

    name: str = ""
    breaker: CircuitBreaker | None = None
    lanes: LaneScheduler | None = None


def parts_of(probed: object) -> RuntimeParts:
    """A pipeline runtime's parts; anything else the endpoint serves (a test's stand-in)
    has none."""
    settings, dispatcher, control = (getattr(probed, a, None) for a in ("settings", "dispatcher", "control"))
    breaker, lanes = getattr(dispatcher, "breaker", None), getattr(control, "lanes", None)
    return RuntimeParts(
        str(getattr(settings, "name", "")),
        breaker if isinstance(breaker, CircuitBreaker) else None,
        lanes if isinstance(lanes, LaneScheduler) else None,
    )


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None or math.isnan(value) or math.isinf(value) else round(value, digits)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else _round(seconds * 1000.0, 2)


class LiveSampler:
    def __init__(
        self,
        metrics: Metrics,
        parts: RuntimeParts | None = None,
        interval_s: float = SAMPLE_INTERVAL_S,
        keep: int = KEEP_POINTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.parts = parts or RuntimeParts()
        self.interval_s = interval_s
        self.clock = clock
        self.points: deque[Point] = deque(maxlen=keep)
        self.marks: deque[Mark] = deque(maxlen=RATE_WINDOW + 1)
        self.now: dict[str, Any] = {}
        self.stopped: str | None = None  # why the loop gave up, shown on the page

    async def run(self, stop: asyncio.Event) -> None:
        self.sample()
        async for _ in every(self.interval_s, stop):
            self.sample()

    def sample(self) -> None:
        """Read the registry once: a point (from the second reading on) and the state now."""
        reading, t = Reading.of(self.metrics.registry), self.clock()
        mark = Mark(
            t,
            reading.total("pipeline_events_consumed_total"),
            reading.total("pipeline_recommendations_total"),
            reading.total("pipeline_dead_letters_total"),
            reading.buckets("pipeline_end_to_end_seconds"),
            reading.buckets("inference_duration_seconds"),
            reading.buckets_by("pipeline_batch_latency_seconds", "lane"),
        )
        self.marks.append(mark)
        first = self.marks[0]
        lag = reading.total("pipeline_consumer_lag_records")
        if mark.t > first.t:
            span = mark.t - first.t
            e2e = increase(mark.end_to_end, first.end_to_end)
            self.points.append(
                Point(
                    round(t, 1),
                    _round((mark.consumed - first.consumed) / span),
                    _round((mark.recommended - first.recommended) / span),
                    _round((mark.dead_lettered - first.dead_lettered) / span),
                    _ms(quantile(0.5, e2e)),
                    _ms(quantile(0.99, e2e)),
                    _ms(quantile(0.99, increase(mark.inference, first.inference))),
                    _round(reading.total("pipeline_in_flight_events"), 0),
                    _round(lag, 0) if reading.has("pipeline_consumer_lag_records") else None,
                )
            )
        self.now = self._state(reading, mark, first)

    def _state(self, reading: Reading, mark: Mark, first: Mark) -> dict[str, Any]:
        def flag(name: str) -> bool:
            return reading.total(name) > 0

        return {
            "knobs": {k: _round(v, 3) for k, v in reading.by("pipeline_adaptive_knob", "knob").items()},
            "in_flight_bytes": _round(reading.total("pipeline_in_flight_bytes"), 0),
            "queued_batches": _round(reading.total("request_queue_size"), 0),
            "event_loop_lag_ms": _ms(reading.total("pipeline_event_loop_lag_seconds")),
            "flags": {
                "stalled": flag("pipeline_stalled"),
                "paused": flag("pipeline_source_paused"),
                "model_contract_pending": flag("pipeline_model_contract_pending"),
                "dead_letter_budget_holding": flag("pipeline_dead_letter_budget_holding"),
                "sink_refusing": flag("pipeline_sink_refusing_dead_letters"),
                "loops_dead": flag("pipeline_loops_dead"),
            },
            "breaker": self._breaker(),
            "lanes": self._lanes(reading, mark, first),
            "partitions": _partitions(reading),
            "restores": _restores(reading),
            "arms": _arms(reading),
        }

    def _breaker(self) -> dict[str, Any] | None:
        b = self.parts.breaker
        if b is None:
            return None
        return {"state": b.state.value, "trips": b.trips, "consecutive_failures": b.consecutive_failures}

    def _lanes(self, reading: Reading, mark: Mark, first: Mark) -> list[dict[str, Any]]:
        rations = reading.by("pipeline_lane_rate_limit_rows_per_second", "lane")
        scheduler = self.parts.lanes
        ids = list(scheduler.lanes) if scheduler is not None else sorted(mark.lanes)
        span = mark.t - first.t
        rows = []
        for lane_id in ids[:MAX_ROWS]:
            gained = increase(mark.lanes.get(lane_id, ()), first.lanes.get(lane_id))
            row: dict[str, Any] = {
                "id": lane_id,
                "ration_rows_s": _round(rations.get(lane_id)),
                "batches_s": _round(count(gained) / span) if span > 0 else None,
                "p99_ms": _ms(quantile(0.99, gained)),
            }
            if scheduler is not None:
                lane = scheduler.lanes[lane_id]
                row |= {
                    "weight": lane.spec.weight,
                    "in_flight": lane.in_flight,
                    "max_in_flight": lane.spec.max_in_flight,
                    "queued": len(lane.queue),
                }
            rows.append(row)
        return rows

    def document(self) -> dict[str, Any]:
        """The page's data: the points as columns (compact), and the state now."""
        columns = list(zip(*self.points, strict=True)) if self.points else [() for _ in SERIES]
        return {
            "name": self.parts.name,
            "interval_s": self.interval_s,
            "window_s": self.interval_s * (self.points.maxlen or 0),
            "rate_window_s": self.interval_s * RATE_WINDOW,
            "series": {name: list(values) for name, values in zip(SERIES, columns, strict=True)},
            "now": self.now,
            "sampler": f"stopped: {self.stopped}" if self.stopped else "running",
        }

    def json(self, extra: dict[str, Any] | None = None) -> bytes:
        return orjson.dumps(self.document() | (extra or {}))


def _partitions(reading: Reading) -> dict[str, Any]:
    """The worst first (most behind, then the oldest unfinished record), at most MAX_ROWS."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name, key in (
        ("pipeline_consumer_lag_records", "lag"),
        ("pipeline_committed_offset", "committed"),
        ("pipeline_oldest_unfinished_age_seconds", "oldest_unfinished_s"),
    ):
        for labels, value in reading.series(name):
            row = rows.setdefault((labels["topic"], labels["partition"]), {})
            row[key] = _round(value, 0 if key != "oldest_unfinished_s" else 2)
    ordered = sorted(
        rows.items(),
        key=lambda kv: (-(kv[1].get("lag") or 0), -(kv[1].get("oldest_unfinished_s") or 0), kv[0]),
    )
    listed = [
        {"topic": topic, "partition": int(partition), **values} for (topic, partition), values in ordered
    ]
    return {"count": len(listed), "rows": listed[:MAX_ROWS]}


def _restores(reading: Reading) -> dict[str, Any] | None:
    """With durable state only (its restores' series exist from the first assignment)."""
    if not reading.has("pipeline_state_restore_lag_records"):
        return None
    lag = reading.by("pipeline_state_restore_lag_records", "partition")
    restored = reading.by("pipeline_state_restored_records_total", "partition")
    ordered = sorted(lag, key=lambda p: (-lag[p], int(p)))
    return {
        "restoring": int(reading.total("pipeline_state_restoring_partitions")),
        "users": _round(reading.total("pipeline_state_users"), 0),
        "disk_bytes": _round(reading.total("pipeline_state_disk_bytes"), 0),
        "failures": _round(reading.total("pipeline_state_restore_failures_total"), 0),
        "partitions": [
            {"partition": int(p), "lag": _round(lag[p], 0), "restored": _round(restored.get(p, 0.0), 0)}
            for p in ordered[:MAX_ROWS]
        ],
    }


def _arms(reading: Reading) -> list[dict[str, Any]] | None:
    """With an experiment only (its arms' serving gauges exist from the start)."""
    if not reading.has("pipeline_experiment_arm_serving"):
        return None
    recommended = {
        (labels["arm"], labels["version"]): value
        for labels, value in reading.series("pipeline_arm_recommendations_total")
    }
    outcomes: dict[tuple[str, str], dict[str, float]] = {}
    for labels, value in reading.series("pipeline_outcomes_total"):
        outcomes.setdefault((labels["arm"], labels["version"]), {})[labels["outcome"]] = value
    rows = []
    for labels, serving in reading.series("pipeline_experiment_arm_serving")[:MAX_ROWS]:
        key = (labels["arm"], labels["version"])
        judged = outcomes.get(key, {})
        hits, misses = judged.get("hit", 0.0), judged.get("miss", 0.0)
        rows.append(
            {
                "arm": key[0],
                "version": key[1],
                "serving": serving > 0,
                "recommendations": _round(recommended.get(key, 0.0), 0),
                "hits": _round(hits, 0),
                "misses": _round(misses, 0),
                "no_return": _round(judged.get("no_return", 0.0), 0),
                "hit_rate": _round(hits / (hits + misses), 4) if hits + misses else None,
            }
        )
    return rows
